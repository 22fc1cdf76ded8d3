"""torch's thread count under CPU contention: torch's own default against perceive's (``runtime.threads``
unset: the usable cores less one), each with and without busy-loop processes competing for the cores.

    .venv/bin/python benchmarks/threads_bench.py [--repeats 3] [--busy 2] [--parts ask,engine,serve]
                                                 [--json threads.json]

Each repeat measures every setting once, in turn, so that the ratios of one repeat share the
machine's state (other work on it included). The parts:

* ``ask``: ``perceive ask`` on models/default/examples/card_0.png: the sample's own time
  (``trace.total_ms``) and the process's wall time (imports and model loading included);
* ``engine``: the loop in one process, no HTTP: 8 held-out cards through one running batch of 8,
  against one at a time (samples/s, the median of 3);
* ``serve``: ``benchmarks/serve_load.py`` (requests/s over HTTP, continuous batching against one at
  a time; the clients run on the same cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERCEIVE = str(Path(sys.executable).parent / "perceive")
IMAGE = ROOT / "models" / "default" / "examples" / "card_0.png"
QUESTION = "What number is written on the card?"


def env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def torch_default_threads() -> int:
    """What torch picks by itself in a fresh process (the count before ``runtime.threads``)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


@contextlib.contextmanager
def busy(n: int):
    """``n`` python processes spinning on a core each."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def ask(threads: int | None, extra_env: dict) -> dict:
    cmd = [PERCEIVE, "ask", str(IMAGE), QUESTION, "--json", "--device", "cpu", "--dtype", "float32",
           *(["--set", f"runtime.threads={threads}"] if threads else [])]
    t = time.perf_counter()
    out = subprocess.run(cmd, env={**env(), **extra_env}, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    result = json.loads(out.stdout)
    assert result["answer"] == "460", result["answer"]
    return {"sample_ms": result["trace"]["total_ms"], "wall_s": wall}


def engine_child(threads: int | None) -> None:
    """In a fresh process: set the threads as the CLI does, then time the running batch."""
    import torch

    from perceive.loop import PerceptionLoop
    from perceive.model import load_model
    from perceive.threads import set_torch_threads

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serve_load import cards

    set_torch_threads(threads)
    loop = PerceptionLoop(load_model(ROOT / "models" / "default"))
    items = cards(8)

    def rate(cap: int) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            batch = loop.batch(cap=cap)
            for i, (image, question) in enumerate(items):
                batch.add(loop.start(image, question, i))
            while len(batch):
                batch.step()
        return len(items) / (time.perf_counter() - t)

    rate(8)  # warm-up
    batched, single = (statistics.median(rate(cap) for _ in range(3)) for cap in (8, 1))
    print(json.dumps({"engine_batched_sps": batched, "engine_single_sps": single,
                      "engine_batching_gain": batched / single}))


def engine(threads: int | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--engine-child", str(threads or 0)], env=env(),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def serve(threads: int | None, args) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "load.json"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--clients", str(args.clients),
                        "--requests", str(args.requests), "--cards", str(args.cards), "--json", str(out),
                        *(["--threads", str(threads)] if threads else [])], env=env(), check=True,
                       stdout=subprocess.DEVNULL)
        rows = json.loads(out.read_text())
    batched, single = rows
    assert all(r["failed"] == r["lost"] == r["wrong"] == 0 for r in rows), rows
    return {"batched_rps": batched["rps"], "single_rps": single["rps"],
            "batching_gain": batched["rps"] / single["rps"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes of the loaded runs")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2, help="per client")
    ap.add_argument("--cards", type=int, default=8)
    ap.add_argument("--parts", default="ask,engine,serve")
    ap.add_argument("--engine-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.engine_child is not None:
        return engine_child(args.engine_child or None)
    parts = set(args.parts.split(","))

    old = torch_default_threads()
    # name: (runtime.threads, extra environment, every part or ask only)
    settings = {f"torch default ({old})": (old, {}, True), "perceive default": (None, {}, True),
                # OpenMP workers that sleep instead of spinning at barriers: ask only, for comparison
                f"torch default ({old}), OMP_WAIT_POLICY=PASSIVE": (old, {"OMP_WAIT_POLICY": "PASSIVE"}, False)}
    loads = sorted({0, args.busy})
    runs = []
    for r in range(args.repeats):
        for load in loads:
            with busy(load):
                for name, (threads, extra_env, every_part) in settings.items():
                    if not every_part and "ask" not in parts:
                        continue
                    row = {"repeat": r, "busy": load, "setting": name}
                    if "ask" in parts:
                        row.update(ask(threads, extra_env))
                    if every_part and "engine" in parts:
                        row.update(engine(threads))
                    if every_part and "serve" in parts:
                        row.update(serve(threads, args))
                    runs.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(runs, indent=1))
    print(f"\ntorch default {old} threads against perceive's default; medians of {args.repeats} repeats")
    print("| busy processes | setting | ask: sample ms | ask: wall s | engine: batch of 8, samples/s | "
          "engine: one at a time | engine: gain | serve: batched req/s | serve: one at a time | serve: gain |")
    print("| --- " * 10 + "|")
    for load in loads:
        for name in settings:
            rows = [x for x in runs if x["busy"] == load and x["setting"] == name]

            def med(key, rows=rows):
                vals = [x[key] for x in rows if key in x]
                return f"{statistics.median(vals):.2f}" if vals else "-"

            keys = ["sample_ms", "wall_s", "engine_batched_sps", "engine_single_sps", "engine_batching_gain",
                    "batched_rps", "single_rps", "batching_gain"]
            print(f"| {load} | {name} | " + " | ".join(med(k) for k in keys) + " |")


if __name__ == "__main__":
    main()
