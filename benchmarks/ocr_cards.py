"""How well the `ocr` action alone reads the number cards (perceive.data.cards), at full resolution.

    .venv/bin/python benchmarks/ocr_cards.py [--n 50] [--seed 0] [--split eval]

For N generated cards (the held-out backgrounds by default) it runs `ocr` through the conformance
path (dispatch, hooks) twice per card: on the card's box (a forced box argument, as a graph would give
it) and on the whole 448x448 image. Reports exact match of the three digits: for the card box, the
text read; for the whole image, whether one of the lines read is the number. Needs
`pip install "perceive[ocr]"`.
"""

from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="eval")
    a = ap.parse_args()

    from perceive.actions import ActionCall, ActionContext
    from perceive.data.cards import make_card, photos_for
    from perceive.dispatch import dispatch
    from perceive.geometry import Box
    from perceive.plugins import get_registry

    reg = get_registry()
    ocr = reg.action("ocr")
    photos, rng = photos_for(a.split), random.Random(a.seed)
    card_ok = whole_ok = 0
    t0 = time.perf_counter()
    misses = []
    for _ in range(a.n):
        img, card = make_card(rng, photos, margin=0)
        ctx = ActionContext.for_image(img)
        res = dispatch(reg.pm, ocr, ActionCall("ocr", ocr.args_for_box(Box(*card.box)), forced=True), ctx)
        got = res.observation[0].text.replace(" ", "") if res.ok else f"<{res.failure.error_type}>"
        card_ok += got == card.number
        whole = dispatch(reg.pm, ocr, ActionCall("ocr", ocr.Args(), forced=True), ActionContext.for_image(img))
        lines = [t.replace(" ", "") for _, t in whole.observation[0].boxes] if whole.ok else []
        whole_ok += card.number in lines
        if got != card.number or card.number not in lines:
            misses.append((card.number, got, lines))
    dt = (time.perf_counter() - t0) / (2 * a.n)
    print(f"ocr on {a.n} {a.split} cards (seed {a.seed}): card box {card_ok}/{a.n} = {card_ok / a.n:.3f}, "
          f"whole image {whole_ok}/{a.n} = {whole_ok / a.n:.3f}; {dt * 1000:.0f} ms a call")
    for number, got, lines in misses:
        print(f"  miss: {number}: card box read {got!r}, whole image read {lines}")


if __name__ == "__main__":
    main()
