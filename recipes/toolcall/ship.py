"""Copy the trained model to models/toolcall with its run config and 4 held-out example cards.

Examples: the first held-out items (index order) whose zoom call's crop is the ground-truth crop
(crop IoU 1), read correctly if any such item is (``--need-answer``); the model card says which.

    python ship.py runs/span/model runs/eval-span/eval.json data/cards-eval --n 4
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
#: the protocol it was trained on, written into its perceive.json (`protocol: auto` reads it; the model
#: still carries the VPT region tokens of the model it continues); declare: false, as trained (no
#: # Tools block in the system turn)
PROTOCOL = {"name": "hermes_json", "options": {"response": "deepeyes", "declare": False}}
RUN_YAML = """# How to run models/toolcall: its perceive.json names the protocol it was trained on (hermes_json,
# DeepEyes' response turn, no # Tools block: `protocol: auto` reads it); two hops at most.
model: .
params: {max_hops: 2}
runtime: {max_new_tokens: 128}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("eval_json", type=Path)
    ap.add_argument("data", type=Path, help="the evaluation set's folder (cards.json, images/)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--need-answer", action="store_true", help="only items it also reads correctly")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "toolcall")
    args = ap.parse_args()

    records = json.loads(args.eval_json.read_text())["records"]
    cards = json.loads((args.data / "cards.json").read_text())["cards"]
    chosen = [r["index"] for r in sorted(records, key=lambda r: r["index"])
              if r.get("crop_iou") == 1.0 and "parse_error" not in r["events"]
              and (r["exact_match"] or not args.need_answer)][: args.n]
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.model, args.out)
    (args.out / "run.yaml").write_text(RUN_YAML)
    meta = json.loads((args.out / "perceive.json").read_text())
    meta["protocol"] = PROTOCOL
    (args.out / "perceive.json").write_text(json.dumps(meta, indent=2))
    ex = args.out / "examples"
    ex.mkdir()
    table = {}
    by_index = {r["index"]: r for r in records}
    for k, i in enumerate(chosen):
        name = f"card_{k}.png"
        Image.open(args.data / "images" / f"{i:06d}.jpg").save(ex / name)
        table[name] = {"number": cards[i]["number"], "box": cards[i]["box"], "crop": cards[i]["crop"],
                       "eval_index": i, "read_correctly": bool(by_index[i]["exact_match"])}
    (ex / "examples.json").write_text(json.dumps(table, indent=1) + "\n")
    print(f"shipped {args.model} to {args.out}; examples: eval items {chosen}")


if __name__ == "__main__":
    main()
