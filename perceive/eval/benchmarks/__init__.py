"""Benchmark readers: each reads a local file in its benchmark's published format and scores an
answer by the benchmark's own rule (:class:`~perceive.eval.benchmarks.base.Benchmark`).
``benchmark: {name: ...}`` in an eval config picks one; ``perceive eval benchmarks`` lists them."""

from __future__ import annotations

from perceive.eval.benchmarks.base import Benchmark, EvalItem, ReadResult
from perceive.eval.benchmarks.hrbench import HRBench
from perceive.eval.benchmarks.mme_realworld import MMERealWorld, MMERealWorldLite
from perceive.eval.benchmarks.paper import Paper
from perceive.eval.benchmarks.reading import ChartQA, DocVQA, TextVQA
from perceive.eval.benchmarks.vstar import VStar

#: every benchmark by its name, and by its aliases (lmms-eval's task names)
BENCHMARKS: dict[str, type[Benchmark]] = {
    # --- the paper's layout (the runner's integration)
    "paper": Paper,
    # --- the benchmarks' own formats
    "vstar": VStar,
    "vstar_bench": VStar,
    "hrbench": HRBench,
    "hrbench_4k": HRBench,
    "hrbench_8k": HRBench,
    "mme_realworld": MMERealWorld,
    "mme_realworld_lite": MMERealWorldLite,
    "textvqa": TextVQA,
    "docvqa": DocVQA,
    "chartqa": ChartQA,
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name`` (a name or an alias of :data:`BENCHMARKS`), ready to read."""
    from perceive.errors import ConfigError

    if name not in BENCHMARKS:
        import difflib

        close = difflib.get_close_matches(name, BENCHMARKS, n=1)
        mean = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown benchmark {name!r}{mean}: known are {', '.join(sorted(BENCHMARKS))}",
                          hint="--benchmark NAME (benchmark.name in a config) takes one of them; perceive eval "
                               "benchmarks lists what each reads")
    return BENCHMARKS[name]()


__all__ = ["BENCHMARKS", "Benchmark", "ChartQA", "DocVQA", "EvalItem", "HRBench", "MMERealWorld",
           "MMERealWorldLite", "Paper", "ReadResult", "TextVQA", "VStar", "get_benchmark"]
