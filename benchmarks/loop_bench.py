"""Online loop vs the reference-style re-prefill baseline.

    .venv/bin/python benchmarks/loop_bench.py [--model DIR] [--samples N] [--hops H] [--tokens T]

Without --model it uses a tiny random-weight model and scripted region spans (CPU-friendly).
Reports wall time per sample, tokens fed to the language model per sample, and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--hops", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48, help="max new tokens")
    ap.add_argument("--batch", action="store_true", help="also time ask_batch")
    args = ap.parse_args()

    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.model import load_model
    from perceive.testing.images import real_photos
    from perceive.testing.scripted import ScriptedPolicy, span_tokens
    from perceive.testing.tiny import tiny_vpt_model

    model = load_model(args.model) if args.model else tiny_vpt_model()
    tok = model.tokenizer
    span = "<|region_token_start|><|x_2|><|y_1|><|x_5|><|y_4|><|region_token_end|>"
    script = span_tokens(tok, span * args.hops)
    photos = list(real_photos().values())
    items = [(photos[i % len(photos)], "What is in the picture?") for i in range(args.samples)]
    fed = []
    real_lm = model.lm

    def counting_lm(embeds, *a, **k):
        fed.append(embeds.shape[0] * embeds.shape[1])
        return real_lm(embeds, *a, **k)

    model.lm = counting_lm
    vision = []  # images per vision-tower call
    real_vision = model.image_embeds

    def counting_vision(pv, grid):
        vision.append(int(grid.reshape(-1, 3).shape[0]))
        return real_vision(pv, grid)

    model.image_embeds = counting_vision
    results = {}
    modes = [("online", False), ("reprefill", True)]
    for name, reprefill in modes:
        opts = LoopOptions(max_new_tokens=args.tokens, max_hops=args.hops, reprefill=reprefill)
        policy = ScriptedPolicy(tok, {i: script for i in range(args.samples)})
        loop = PerceptionLoop(model, options=opts, policy=policy)
        loop.ask(*items[0])  # warm-up
        fed.clear()
        times = []
        for img, q in items:
            t0 = time.perf_counter()
            loop.ask(img, q)
            times.append((time.perf_counter() - t0) * 1000)
        results[name] = (statistics.median(times), sum(fed) / len(items))
        print(f"{name:10s} median {results[name][0]:8.1f} ms/sample   {results[name][1]:8.0f} tokens fed/sample")
    if args.batch:
        opts = LoopOptions(max_new_tokens=args.tokens, max_hops=args.hops)
        loop = PerceptionLoop(model, options=opts, policy=ScriptedPolicy(tok, {i: script for i in range(len(items))}))
        loop.ask_batch(items[:2])  # warm-up
        vision.clear()
        t0 = time.perf_counter()
        loop.ask_batch(items)
        per = (time.perf_counter() - t0) * 1000 / len(items)
        print(f"{'batch':10s} {per:8.1f} ms/sample (ask_batch of {len(items)}): {len(vision)} vision-tower calls "
              f"for {sum(vision)} images; {results['online'][0] / per:.2f}x the one-at-a-time online rate")
    on, ref = results["online"], results["reprefill"]
    print(f"speed-up {ref[0] / on[0]:.2f}x, tokens fed {ref[1] / on[1]:.2f}x fewer "
          f"(device {model.device}, torch {torch.__version__}, threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
