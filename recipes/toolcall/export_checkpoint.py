"""Export a training checkpoint (accelerate state) as a model folder, for evaluating mid-run.

    python export_checkpoint.py runs/toolcall/checkpoint-500 runs/toolcall/model-500
"""
import sys

from safetensors.torch import load_file

from perceive.model import load_model
from perceive.model.checkpoint import save_model

ckpt, out = sys.argv[1], sys.argv[2]
model = load_model("../../models/default", device="cpu", dtype="float32")
state = load_file(f"{ckpt}/model.safetensors")
missing, unexpected = model.load_state_dict(state, strict=False)
print("missing", missing[:5], len(missing), "unexpected", unexpected[:5], len(unexpected))
save_model(model, out)
print("saved", out)
