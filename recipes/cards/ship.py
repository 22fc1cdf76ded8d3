"""Copy the trained model to models/default with example cards for `make demo` and the CI test.

Examples are the first held-out evaluation images (index order) that the model reads correctly
through a Region Selection hop in `runs/eval-region/eval.json`; the model card says how many of
the first ones it got right, so the choice is visible.

    python ship.py runs/region/model runs/eval-region/eval.json data/cards-eval --n 4
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("eval_json", type=Path)
    ap.add_argument("data", type=Path, help="the evaluation set's folder (cards.json, images/)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "default")
    args = ap.parse_args()

    records = json.loads(args.eval_json.read_text())["records"]
    cards = json.loads((args.data / "cards.json").read_text())["cards"]
    chosen, looked = [], 0
    for r in sorted(records, key=lambda r: r["index"]):
        looked += 1
        if r["exact_match"] and "region_select" in r["actions"]:
            chosen.append(r["index"])
        if len(chosen) == args.n:
            break
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.model, args.out)
    ex = args.out / "examples"
    ex.mkdir()
    table = {}
    for k, i in enumerate(chosen):
        name = f"card_{k}.png"
        Image.open(args.data / "images" / f"{i:06d}.jpg").save(ex / name)
        table[name] = {"number": cards[i]["number"], "box": cards[i]["box"], "eval_index": i}
    (ex / "examples.json").write_text(json.dumps(table, indent=1) + "\n")
    print(f"shipped {args.model} to {args.out}; examples: eval items {chosen}, "
          f"the first {len(chosen)} read correctly among the first {looked}")


if __name__ == "__main__":
    main()
