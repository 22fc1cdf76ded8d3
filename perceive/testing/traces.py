"""Comparing traces in tests: two runs of the same samples agree on everything but their timings."""

from __future__ import annotations

from typing import Any


def untimed(x: Any) -> Any:
    """``x`` (a trace or record as JSON: dicts and lists) without its timing figures: every key
    ending in ``_ms`` (``latency_ms``, a hop's ``dispatch_ms``, ``total_ms``), at any depth."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if not k.endswith("_ms")}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x
