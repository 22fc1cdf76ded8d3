"""Online loop vs the reference-style re-prefill baseline.

    .venv/bin/python benchmarks/loop_bench.py [--model DIR | --real-size [--depth N]] [--samples N] [--hops H]
        [--tokens T] [--batch [N]] [--dtype bf16|fp32] [--threads K] [--device cpu|cuda] [--json PATH]

Without --model it uses a tiny random-weight model and scripted region spans (CPU-friendly).
``--real-size`` builds a random-weight VPT model with Qwen2-VL-2B's widths (text 1536 x 28 layers,
12 heads, 2 KV heads, MLP 8960, vocabulary 151936, tied embeddings; vision 1280 x 32 layers, 16
heads, patch 14, merge 2) offline, and feeds it images at Qwen2-VL's native resolution (up to
``--max-pixels``); ``--depth N`` cuts both the text and the vision layer counts to N.

Each sample answers one question about a real photo with ``--hops`` scripted region spans (the
model's own greedy tokens after them, up to ``--tokens``). Reported, per sample: wall time online
and with the re-prefill baseline, tokens fed to the language model, where the online time goes
(vision tower = the model's ``image_features``/``image_embeds`` calls, language model prefill and
decode, lm_head, the rest), vision-tower calls and images encoded (with a check that no call
encodes the same image twice), ``ask_batch`` of ``--batch`` N against N sequential asks, and peak
memory (peak RSS; on CUDA also ``torch.cuda.max_memory_allocated``). A markdown table of the
figures goes to stdout; ``--json`` writes them too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import statistics
import time
from collections import defaultdict

import torch

#: Qwen2-VL-2B's sizes (its config.json), built here without a download
QWEN2_VL_2B = dict(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vocab=151936, rope_theta=1e6,
                   max_positions=32768, vision_dim=1280, vision_layers=32, vision_heads=16, mlp_ratio=4, patch=14,
                   merge=2)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def real_size_model(depth: int | None = None, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                    attn: str = "sdpa", min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280, seed: int = 0):
    """A random-weight VPT model (no re-encode branch) on a Qwen2-VL base with Qwen2-VL-2B's
    widths and ``depth`` text and vision layers (None: 28 and 32), the tiny tokenizer's special
    tokens at their ids in a Qwen-sized vocabulary. The same build as
    :func:`perceive.model.tiny.tiny_base`, whose fixed MLP ratio and vocabulary do not fit."""
    from perceive.model.checkpoint import base_classes, image_processor
    from perceive.model.vpt import VPTModel
    from perceive.testing.tiny import build_tokenizer, tiny_vpt_config

    s = QWEN2_VL_2B
    tok = build_tokenizer()
    ids = tok.convert_tokens_to_ids
    specials = dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                    pad_token_id=ids("<|endoftext|>"))
    half = s["hidden"] // s["heads"] // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # (16, 24, 24), as Qwen2-VL-2B
    text = dict(vocab_size=max(s["vocab"], len(tok)), hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                num_hidden_layers=depth or s["layers"], num_attention_heads=s["heads"],
                num_key_value_heads=s["kv_heads"], max_position_embeddings=s["max_positions"],
                rope_scaling={"type": "mrope", "mrope_section": mrope}, rope_theta=s["rope_theta"], **specials)
    vision = dict(depth=depth or s["vision_layers"], embed_dim=s["vision_dim"], hidden_size=s["hidden"],
                  num_heads=s["vision_heads"], mlp_ratio=s["mlp_ratio"], patch_size=s["patch"],
                  spatial_merge_size=s["merge"])
    config_cls, model_cls = base_classes("qwen2_vl")
    cfg = config_cls(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                     video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                     vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=True, **specials)
    torch.manual_seed(seed)
    with torch.device(device):
        base = model_cls._from_config(cfg, dtype=dtype, attn_implementation=attn).eval()
    model = VPTModel(base, tiny_vpt_config(tok, "qwen2_vl", branches=[], hidden=s["hidden"])).eval()
    model.tokenizer = tok
    model.image_processor = image_processor(min_pixels, max_pixels, merge=s["merge"])
    return model


class Meter:
    """Wraps the model's vision tower, language model and lm_head to count and time them (on
    CUDA, synchronised around each call)."""

    def __init__(self, model):
        self.model = model
        self.sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        self.reset()
        real_vision, real_lm, real_logits = model.image_features, model.lm, model.logits

        def vision(pv, grid):
            t0 = time.perf_counter()
            rows = grid.reshape(-1, 3)
            self.vision_calls.append(int(rows.shape[0]))
            digests = [hashlib.sha1(p.detach().float().cpu().numpy().tobytes()).hexdigest()
                       for p in torch.split(pv, [int(r.prod()) for r in rows])]
            self.repeats += len(digests) - len(set(digests))
            self.overhead_ms += (time.perf_counter() - t0) * 1000  # left out of the reported times
            return self._timed("vision", real_vision, pv, grid)

        def lm(embeds, *a, **k):
            self.fed += embeds.shape[0] * embeds.shape[1]
            return self._timed("prefill" if embeds.shape[1] > 1 else "decode", real_lm, embeds, *a, **k)

        def logits(hidden):
            return self._timed("lm_head", real_logits, hidden)

        # image_embeds calls self.image_features, so both paths land here
        model.image_features, model.lm, model.logits = vision, lm, logits

    def _timed(self, part, fn, *a, **k):
        self.sync()
        t0 = time.perf_counter()
        out = fn(*a, **k)
        self.sync()
        self.ms[part] += (time.perf_counter() - t0) * 1000
        return out

    def reset(self):
        self.fed = 0
        self.overhead_ms = 0.0  # the repeat check's hashing
        self.vision_calls: list[int] = []  # images per vision-tower call
        self.repeats = 0  # images encoded more than once within one call
        self.ms: dict[str, float] = defaultdict(float)


def _mb(x: float) -> float:
    return round(x / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a local model folder (default: a tiny random-weight model)")
    ap.add_argument("--real-size", action="store_true", help="random weights at Qwen2-VL-2B's widths")
    ap.add_argument("--depth", type=int, help="with --real-size: text and vision layers (default 28 and 32)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--hops", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48, help="max new tokens")
    ap.add_argument("--batch", type=int, nargs="?", const=0, default=None,
                    help="also time ask_batch of N samples against N sequential asks (no N: --samples)")
    ap.add_argument("--dtype", choices=sorted(DTYPES),
                    help="default: bf16 with --real-size, the model's own otherwise (tiny: fp32)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--attn", default="sdpa", help="attention implementation (--real-size)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--max-pixels", type=int, default=28 * 28 * 1280,
                    help="--real-size image processor bound (Qwen2-VL's 1280 visual tokens)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed asks before timing (0: none)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.depth and not args.real_size:
        ap.error("--depth needs --real-size")

    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.testing.images import real_photos
    from perceive.testing.scripted import ScriptedPolicy, span_tokens

    t0 = time.perf_counter()
    if args.real_size:
        model = real_size_model(args.depth, DTYPES[args.dtype or "bf16"], args.device, args.attn,
                                max_pixels=args.max_pixels)
        name = f"random Qwen2-VL-2B widths, depth {args.depth or '28/32'}"
    elif args.model:
        from perceive.model import load_model

        dtype = str(DTYPES[args.dtype]).replace("torch.", "") if args.dtype else None
        model = load_model(args.model, device=args.device, dtype=dtype)
        name = args.model
    else:
        from perceive.testing.tiny import tiny_vpt_model

        model = tiny_vpt_model()
        if args.dtype:
            model = model.to(DTYPES[args.dtype])
        model = model.to(args.device)
        name = "tiny random"
    build_s = time.perf_counter() - t0
    cuda = model.device.type == "cuda"
    params = sum(p.numel() for p in model.parameters())
    tok = model.tokenizer
    span = "<|region_token_start|><|x_2|><|y_1|><|x_5|><|y_4|><|region_token_end|>"
    script = span_tokens(tok, span * args.hops)
    photos = list(real_photos().values())
    batch = args.batch if args.batch is None or args.batch > 0 else args.samples
    items = [(photos[i % len(photos)], "What is in the picture?") for i in range(max(args.samples, batch or 0))]
    meter = Meter(model)

    def loop_for(reprefill: bool, n: int) -> PerceptionLoop:
        opts = LoopOptions(max_new_tokens=args.tokens, max_hops=args.hops, reprefill=reprefill)
        return PerceptionLoop(model, options=opts, policy=ScriptedPolicy(tok, {i: script for i in range(n)}))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, *a):
        """Wall ms of ``fn(*a)`` less the meter's own hashing, and its result."""
        sync()
        t, extra = time.perf_counter(), meter.overhead_ms
        out = fn(*a)
        sync()
        return (time.perf_counter() - t) * 1000 - (meter.overhead_ms - extra), out

    res: dict = dict(model=name, params_m=round(params / 1e6, 1), dtype=str(model.dtype).replace("torch.", ""),
                     device=str(model.device), threads=torch.get_num_threads(), torch=torch.__version__,
                     cpu=platform.processor() or platform.machine(), hops=args.hops, max_new_tokens=args.tokens,
                     build_s=round(build_s, 1))
    print(f"{name}: {params / 1e6:.0f}M parameters, {res['dtype']} on {model.device}, "
          f"{res['threads']} threads, built in {build_s:.1f} s", flush=True)
    for mode, reprefill in (("online", False), ("reprefill", True)):
        n = args.samples
        loop = loop_for(reprefill, len(items))
        for _ in range(args.warmup if mode == "online" else 0):  # the modes share kernels: warm once
            loop.ask(*items[0])
        meter.reset()
        times, hops = [], []
        for img, q in items[:n]:
            ms, ans = timed(loop.ask, img, q)
            times.append(ms)
            hops.append(len(ans.trace.hops))
        total = sum(times)
        r = dict(ms_per_sample=round(statistics.median(times), 1), ms_total=round(total, 1), samples=n,
                 images_per_vision_call=list(meter.vision_calls),
                 hops_per_sample=sum(hops) / n, tokens_fed_per_sample=round(meter.fed / n, 1),
                 vision_calls_per_sample=len(meter.vision_calls) / n,
                 images_encoded_per_sample=sum(meter.vision_calls) / n, repeated_in_one_call=meter.repeats,
                 share={k: round(v / total, 4) for k, v in sorted(meter.ms.items())})
        r["share"]["other"] = round(1 - sum(meter.ms.values()) / total, 4)
        r["times_ms"] = [round(t, 1) for t in times]
        res[mode] = r
        print(f"{mode:10s} median {r['ms_per_sample']:9.1f} ms/sample  {r['tokens_fed_per_sample']:7.0f} tokens fed"
              f"  {r['vision_calls_per_sample']:.0f} vision calls / {r['images_encoded_per_sample']:.0f} images "
              f"per sample ({meter.repeats} encoded twice in one call)  hops {r['hops_per_sample']:.1f}", flush=True)
    on, ref = res["online"], res["reprefill"]
    res["speedup"] = round(ref["ms_per_sample"] / on["ms_per_sample"], 2)
    res["fed_ratio"] = round(ref["tokens_fed_per_sample"] / on["tokens_fed_per_sample"], 2)
    if batch:
        # N sequential asks: the online ones above, and more of them when N > --samples
        loop = loop_for(False, len(items))
        seq = sum(on["times_ms"][:batch]) + sum(timed(loop.ask, *it)[0] for it in items[args.samples:batch])
        if args.warmup:
            loop.ask_batch(items[:min(2, batch)])
        meter.reset()
        ms, answers = timed(loop.ask_batch, items[:batch])
        res["batch"] = dict(n=batch, ms_total=round(ms, 1), ms_per_sample=round(ms / batch, 1),
                            sequential_ms_total=round(seq, 1), gain=round(seq / ms, 2),
                            vision_calls=len(meter.vision_calls), images=sum(meter.vision_calls),
                            tokens_fed=meter.fed, vision_share=round(meter.ms["vision"] / ms, 4),
                            hops_per_sample=sum(len(a.trace.hops) for a in answers) / batch)
        b = res["batch"]
        print(f"{'batch':10s} ask_batch of {batch}: {ms / 1000:.2f} s against {seq / 1000:.2f} s for {batch} "
              f"sequential asks ({b['gain']:.2f}x); {b['vision_calls']} vision-tower calls for {b['images']} images",
              flush=True)
    res["peak_rss_mb"] = _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if cuda:
        res["cuda_max_allocated_mb"] = _mb(torch.cuda.max_memory_allocated())
    print(f"speed-up {res['speedup']:.2f}x, tokens fed {res['fed_ratio']:.2f}x fewer "
          f"(device {model.device}, torch {torch.__version__}, threads {torch.get_num_threads()})\n")
    print(table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


def table(res: dict) -> str:
    """The figures as markdown table rows."""
    on, ref = res["online"], res["reprefill"]
    sh = on["share"]
    split = ", ".join(f"{k} {100 * sh[k]:.1f}%" for k in ("vision", "prefill", "decode", "lm_head", "other")
                      if k in sh)
    rows = [
        ("model", f"{res['model']} ({res['params_m']:.0f}M params), {res['dtype']}, {res['device']}, "
                  f"{res['threads']} threads"),
        ("sample", f"{res['hops']}-hop region spans (scripted), up to {res['max_new_tokens']} new tokens"),
        ("online, ms/sample (median)", f"{on['ms_per_sample']:.1f} (n={on['samples']})"),
        ("reprefill, ms/sample (median)", f"{ref['ms_per_sample']:.1f} (n={ref['samples']})"),
        ("online speed-up", f"{res['speedup']:.2f}x"),
        ("tokens fed/sample, online / reprefill", f"{on['tokens_fed_per_sample']:.0f} / "
                                                  f"{ref['tokens_fed_per_sample']:.0f} ({res['fed_ratio']:.2f}x)"),
        ("online time split", split),
        ("vision share, reprefill", f"{100 * ref['share'].get('vision', 0):.1f}%"),
        ("vision calls / images per sample, online", f"{on['vision_calls_per_sample']:.0f} / "
                                                     f"{on['images_encoded_per_sample']:.0f}"),
        ("vision calls / images per sample, reprefill", f"{ref['vision_calls_per_sample']:.0f} / "
                                                        f"{ref['images_encoded_per_sample']:.0f} "
                                                        f"({ref['repeated_in_one_call']} encoded twice in one call)"),
    ]
    if "batch" in res:
        b = res["batch"]
        rows += [(f"ask_batch of {b['n']} vs {b['n']} sequential, s",
                  f"{b['ms_total'] / 1000:.2f} vs {b['sequential_ms_total'] / 1000:.2f} ({b['gain']:.2f}x)"),
                 (f"vision calls / images, ask_batch of {b['n']}", f"{b['vision_calls']} / {b['images']}")]
    rows.append(("peak RSS", f"{res['peak_rss_mb'] / 1024:.2f} GiB"))
    if "cuda_max_allocated_mb" in res:
        rows.append(("CUDA max allocated", f"{res['cuda_max_allocated_mb'] / 1024:.2f} GiB"))
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


if __name__ == "__main__":
    main()
