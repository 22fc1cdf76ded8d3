"""The protocol of an eval run: everything that decides its numbers, recorded in every result.

Published numbers in this field are hard to reproduce because the conditions of a score are left
out: options never shuffled, a different judge, Avg@32 sampled against greedy Avg@1, boxes read in
another coordinate space. So every result carries two records:

``protocol``  the conditions of the measurement (the benchmark and its data, option shuffling and
              its seed, the extraction rule and judge, k samples and their seeds, greedy or
              sampled, the token and hop budgets, how intervals are computed). Two runs are
              comparable only when these are equal: ``perceive eval compare`` refuses otherwise.
``system``    what was measured (the model folder's hash or the endpoint, the tool protocol and the
              coordinate space its calls are read in, the graph and its hash): what a comparison
              compares, so it may differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: protocol keys two runs may differ in and still be compared (none: every key is a condition)
COMPARABLE_DESPITE: tuple[str, ...] = ()


def model_sha256(digests: dict[str, str] | None) -> str | None:
    """One sha256 over a model folder from its files' digests (:func:`perceive.eval.run_folder.model_digests`:
    a large file is read at its ends only), each file's name and digest in name order."""
    if digests is None:
        return None
    h = hashlib.sha256()
    for name, digest in sorted(digests.items()):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


#: the frame of each built-in protocol's boxes, where no ``coordinates`` option says it
SPACES = {"vpt": "cells of the image's 8x8 grid", "mini_o3_grounding": "0-1 of the named view"}
#: a JSON protocol's ``coordinates`` option, in words
COORDINATES = {"absolute": "pixels of the named view", "relative_1000": "0-1000 of the named view",
               "absolute_resized": "pixels of the named view as resized for the model"}


def coordinate_space(protocol) -> str:
    """The frame a tool protocol's boxes are read in, in words: its ``coordinates`` option where
    it has one (``hermes_json``), else the protocol's own frame (:data:`SPACES`; another
    protocol: pixels of the view it names)."""
    coordinates = getattr(getattr(protocol, "options", None), "coordinates", None)
    if coordinates is not None:
        return COORDINATES.get(str(coordinates), str(coordinates))
    return SPACES.get(protocol.name, "pixels of the named view")


def protocol_of(cfg, benchmark, data_sha256: str | None, items: int, judge_model: str | None) -> dict[str, Any]:
    """The conditions of ``cfg``'s run on ``items`` items of ``benchmark`` (see the module doc)."""
    from perceive.eval.stats import BOOTSTRAP, NORMAL

    s = cfg.sampling
    decoding: dict[str, Any] = {"mode": "sampled" if s.do_sample else "greedy"}
    if s.do_sample:
        decoding.update(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
    k = cfg.samples
    return {
        "benchmark": benchmark.name, "data_sha256": data_sha256, "items": items,
        "shuffle": ({"options": cfg.benchmark.shuffled(benchmark), "seed": cfg.benchmark.seed}
                    if benchmark.choices else None),
        "extraction": benchmark.extraction, "judge": judge_model,
        "samples": k, "seeds": f"sample j of item i draws from seed {s.seed} + i*{k} + j" if s.do_sample else None,
        "decoding": decoding, "max_new_tokens": cfg.runtime.max_new_tokens,
        "max_hops": cfg.graph_params().get("max_hops"),
        "oracle_spans": cfg.oracle_spans,
        "intervals": BOOTSTRAP if benchmark.bootstrapped() else NORMAL,
    }


def system_of(cfg, loop, graph, model_files: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``cfg``'s run measured: the model (its folder's hash, or the endpoint and served model),
    the tool protocol and the coordinate space of its boxes, the graph, its params and hash.
    ``model_files``: the folder's file digests when the run has them already (its fingerprint)."""
    from perceive.eval.run_folder import model_digests

    spec = graph.spec.model_dump(mode="json") if hasattr(graph.spec, "model_dump") else str(graph.spec)
    out: dict[str, Any] = {
        "tool_protocol": loop.protocol.name, "coordinates": coordinate_space(loop.protocol),
        "graph": graph.name, "params": cfg.graph_params(),
        "graph_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest(),
    }
    if cfg.remote is None:
        digests = model_files if model_files is not None else model_digests(cfg.model.path)
        out.update(model=str(cfg.model.path), model_sha256=model_sha256(digests))
    else:
        out.update(model=getattr(loop, "served", None), endpoints=cfg.remote.urls)
    return out


def differences(a: dict | None, b: dict | None) -> list[str]:
    """How two runs' protocols differ, one phrase per key (``None``: a run made before protocols
    were recorded)."""
    if a is None or b is None:
        return [] if a is b is None else ["one run records no protocol (made before perceive recorded it): run it "
                                          "again"]
    out = []
    for key in sorted(set(a) | set(b)):
        if key in COMPARABLE_DESPITE or a.get(key) == b.get(key):
            continue
        out.append(f"{key}: {json.dumps(a.get(key), default=str)} vs {json.dumps(b.get(key), default=str)}")
    return out
