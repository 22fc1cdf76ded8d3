"""GRPO throughput: rollouts (samples/s) and the update (trajectories/s) of `perceive train` with
`method: grpo`, on a model and generated number cards.

    .venv/bin/python benchmarks/rl_throughput.py [--model models/default] [--steps 4] [--group 8]
        [--prompts 8] [--batch 16] [--threads K] [--json PATH]

Each step samples ``--prompts x --group`` rollouts with the perception loop (continuous batching,
temperature 1) and takes one optimizer step on them (teacher-forced forward and backward of every
trajectory, ``--batch`` per micro-batch). The first step (warm-up) is left out of the figures.
Reported: median rollout samples/s and update trajectories/s over the other steps, hops and
response length per rollout, the CPU, threads and dtype (float32).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "models" / "default"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from perceive.data.cards import generate
    from perceive.rl.config import GRPOConfig
    from perceive.rl.trainer import GRPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "cards", a.prompts * a.steps, seed=0, fmt="jpg", margin=0, prompts=False)
        cfg = GRPOConfig.model_validate({
            "method": "grpo", "model": {"path": a.model}, "data": {"train": str(data / "region.json")},
            "rollout": {"group_size": a.group, "prompts_per_step": a.prompts, "max_new_tokens": 16, "max_hops": 2},
            "optim": {"steps": a.steps, "batch_size": a.batch, "lr": 1e-5}, "output": str(Path(tmp) / "run"),
            "log_every": 0})
        t = GRPOTrainer(cfg, progress=False)
        t.train()
        recs = [h["telemetry"] for h in t.history if "telemetry" in h][1:]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    out = {"model": a.model, "cpu": cpu, "threads": torch.get_num_threads(), "dtype": "float32",
           "rollouts_per_step": a.prompts * a.group, "steps_measured": len(recs),
           "rollout_samples_per_s": statistics.median(r["rollout_samples_per_s"] for r in recs),
           "update_trajectories_per_s": statistics.median(r["update_samples_per_s"] for r in recs),
           "hops_per_sample": statistics.fmean(r["hops_per_sample"] for r in recs),
           "response_length": statistics.fmean(r["response_length"] for r in recs)}
    print("| " + " | ".join(out) + " |\n|" + " --- |" * len(out))
    print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in out.values()) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
