"""Load on ``perceive serve``: N concurrent clients x M requests each, over real HTTP on 127.0.0.1
with the official ``openai`` client, on the shipped model and held-out number cards.

    .venv/bin/python benchmarks/serve_load.py [--model models/default] [--clients 8] [--requests 6]
                                              [--batch 8] [--json out.json]

The server is a ``perceive serve`` process of its own (as in production: the clients' threads do
not share its interpreter). It runs the same load twice on the same server settings: continuous
batching (``--batch``
samples in the running batch) and one request at a time (``--max-batch 1``). For each it reports
requests/s, p50/p95/p99 latency, and failed or lost requests; every answer is checked against an
offline ``PerceptionLoop.ask`` of the same card (they must all match).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cards(n: int, seed: int = 7):
    """``n`` held-out number cards (the eval split's photos, never used in training)."""
    from perceive.data.cards import QUESTION, make_card, photos_for

    rng = random.Random(seed)
    photos = photos_for("eval")
    return [(make_card(rng, photos, margin=0)[0], QUESTION) for _ in range(n)]


@contextlib.contextmanager
def served(model: str, batch: int, queue: int, threads: int | None):
    """``perceive serve`` in a process of its own (the clients' threads must not share its GIL);
    ``threads``: its torch threads (``None``: the server's default, OMP_NUM_THREADS unset)."""
    import openai

    from perceive.testing.live import free_port

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "perceive"), "serve", "--model", model, "--port", str(port),
           "--model-name", "m", "--max-batch", str(batch), "--max-queue", str(queue), "--device", "cpu",
           "--drain-window", "0", *(["--threads", str(threads)] if threads else [])]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"perceive serve exited: {proc.stderr.read()}")
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


def run_load(model, items, want, clients: int, per_client: int, batch: int, threads: int | None) -> dict:
    import openai

    from perceive.testing.live import user_message

    latencies: list[float] = []
    failed: list[str] = []
    wrong: list[tuple[int, str, str]] = []
    done = 0
    lock = threading.Lock()
    with served(model, batch, clients * per_client + 8, threads) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)
        client.chat.completions.create(model="m", messages=[user_message(*items[0])])  # warm-up

        def worker(c: int):
            nonlocal done
            for r in range(per_client):
                k = (c * per_client + r) % len(items)
                t = time.perf_counter()
                try:
                    resp = client.chat.completions.create(model="m", messages=[user_message(*items[k])])
                    text = resp.choices[0].message.content
                except Exception as exc:  # counted, never hidden
                    with lock:
                        failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)
                    done += 1
                    if text != want[k]:
                        wrong.append((k, text, want[k]))

        threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    total = clients * per_client
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [latencies[0]] * 99
    return {"batch": batch, "requests": total, "answered": done, "failed": len(failed),
            "lost": total - done - len(failed), "wrong": len(wrong), "seconds": wall, "rps": done / wall,
            "p50_s": q[49], "p95_s": q[94], "p99_s": q[98], "errors": failed[:3], "wrong_examples": wrong[:3]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "models" / "default"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6, help="per client")
    ap.add_argument("--batch", type=int, default=8, help="continuous batching: samples running at once")
    ap.add_argument("--cards", type=int, default=24)
    ap.add_argument("--threads", type=int, default=None,
                    help="the server's torch threads (default: its own, runtime.threads unset)")
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    from perceive.loop import PerceptionLoop
    from perceive.model import load_model

    torch.manual_seed(0)
    model = load_model(args.model)
    loop = PerceptionLoop(model)
    items = cards(args.cards)
    want = [a.text for a in (loop.ask(img, q) for img, q in items)]  # offline, one at a time
    rows = [run_load(args.model, items, want, args.clients, args.requests, b, args.threads) for b in (args.batch, 1)]
    print(f"model {args.model}, {args.clients} clients x {args.requests} requests, {args.cards} held-out cards, "
          f"server torch threads {args.threads or 'default'}, server in its own process")
    print("| running batch | requests | answered right | failed | lost | req/s | p50 s | p95 s | p99 s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['requests']} | {r['answered'] - r['wrong']} | {r['failed']} | {r['lost']} | "
              f"{r['rps']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p99_s']:.2f} |")
    print(f"continuous batching / one at a time: {rows[0]['rps'] / rows[1]['rps']:.2f}x requests/s")
    for r in rows:
        if r["errors"] or r["wrong_examples"]:
            print("problems:", r["batch"], r["errors"], r["wrong_examples"])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
