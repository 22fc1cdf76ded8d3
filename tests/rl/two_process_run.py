"""Run a tiny GRPO config (argv: config json, output folder) in whatever processes `accelerate
launch` started; the main process saves the final state dict to OUTPUT/weights.pt."""

import json
import sys

import torch

from perceive.rl.config import GRPOConfig
from perceive.rl.trainer import GRPOTrainer

cfg = GRPOConfig.model_validate({**json.loads(sys.argv[1]), "output": sys.argv[2]})
t = GRPOTrainer(cfg, progress=False)
t.train(overwrite=True)
if t.acc.is_main_process:
    torch.save({k: v.detach().cpu() for k, v in t.policy.state_dict().items()}, f"{sys.argv[2]}/weights.pt")
    json.dump([h["telemetry"]["reward/mean"] for h in t.history if "telemetry" in h],
              open(f"{sys.argv[2]}/rewards.json", "w"))
