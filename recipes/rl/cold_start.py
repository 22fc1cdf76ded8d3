"""The where-to-look cold start: models/default with its localisation readout forgotten.

The output rows of the 16 cell tokens (x_0..x_7, y_0..y_7) are set to their mean, so after
``<|region_token_start|>`` every cell is equally likely: the model still opens a span, still reads a
crop, but no longer knows where the card is. GRPO (grpo_where.yaml) must learn where to look from
the answer alone. Usage: python cold_start.py ../../models/default runs/cold_start
"""

import sys

import torch

from perceive.model import load_model, save_model


def main(src: str, out: str) -> None:
    model = load_model(src, device="cpu", dtype="float32")
    rows = model.config.region.x_ids + model.config.region.y_ids
    with torch.no_grad():
        w = model.lm_head.weight
        for ids in (model.config.region.x_ids, model.config.region.y_ids):
            w[ids] = w[ids].mean(0, keepdim=True)
        if getattr(model.lm_head, "bias", None) is not None:
            b = model.lm_head.bias
            for ids in (model.config.region.x_ids, model.config.region.y_ids):
                b[ids] = b[ids].mean()
    save_model(model, out)
    print(f"{out}: the output rows of {len(rows)} cell tokens set to their mean")


if __name__ == "__main__":
    main(*sys.argv[1:3])
