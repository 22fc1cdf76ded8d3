"""Convert a `perceive data cards` folder (made with --margin 0) into hermes_json tool-call items.

Each region item (question -> VPT span -> crop -> answer) becomes

    user:      <image>What number is written on the card?
    assistant: <tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x0, y0, x1, y1]}}\n</tool_call>
    user:      <tool_response><image></tool_response>
    assistant: the three digits

bbox_2d is the crop the VPT span makes with margin 0: the card's 8x8-grid cells, in pixels of the
448x448 original (absolute coordinates; cell boundaries are multiples of 56). The crop image is the
same one the region item names (`images/N.jpg_x0,y0,x1,y1`), so the model reads exactly what it was
trained to read. The observation turn is what hermes_json (response: deepeyes) appends at inference.

    python make_data.py data/wd-train [more folders ...] --out data/toolcall-train.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TOOL = "image_zoom_in_tool"
QUESTION = "What number is written on the card?"


def call_text(box) -> str:
    body = json.dumps({"name": TOOL, "arguments": {"bbox_2d": [int(v) for v in box]}})
    return f"<tool_call>\n{body}\n</tool_call>"


def region_span(card) -> str:
    """The VPT span the default model writes for this card (its cells, margin 0)."""
    xs, ys = card["xs"], card["ys"]
    return (f"<|region_token_start|><|x_{min(xs)}|><|y_{min(ys)}|><|x_{max(xs)}|><|y_{max(ys)}|>"
            "<|region_token_end|>")


def convert(folder: Path, prefix: str, span: bool = False) -> list[dict]:
    meta = json.loads((folder / "cards.json").read_text())
    if meta["meta"]["margin"] != 0:
        raise SystemExit(f"{folder}: made with margin {meta['meta']['margin']}; this recipe needs --margin 0")
    out = []
    for i, card in enumerate(meta["cards"]):
        img = f"{prefix}images/{i:06d}.{'jpg' if (folder / 'images' / f'{i:06d}.jpg').exists() else 'png'}"
        crop = ",".join(str(v) for v in card["crop"])
        out.append({"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                                 {"role": "assistant",
                                  "content": (region_span(card) if span else "") + call_text(card["crop"])},
                                 {"role": "user", "content": "<tool_response><image></tool_response>"},
                                 {"role": "assistant", "content": card["number"]}],
                    "images": [img, f"{img}_{crop}"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--span", action="store_true",
                    help="write the default model's VPT span (its cells) before the call, as text the "
                         "hermes_json protocol passes over: the call's numbers are then the span's cells in pixels")
    args = ap.parse_args()
    items = []
    for f in args.folders:
        # image paths relative to the output file's folder
        rel = f.resolve().relative_to(args.out.resolve().parent)
        items += convert(f, f"{rel.as_posix()}/", args.span)
    args.out.write_text(json.dumps(items, indent=1))
    print(f"{len(items)} items -> {args.out}")


if __name__ == "__main__":
    main()
