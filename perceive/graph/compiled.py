"""Loading, validating and compiling graphs; running them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from perceive.config import load_yaml
from perceive.graph.spec import GraphSpec, substitute
from perceive.graph.validate import GraphIssue, GraphValidationError, parse, to_networkx, validate

GRAPHS_DIR = Path(os.environ.get("PERCEIVE_GRAPHS_DIR", Path(__file__).resolve().parents[2] / "graphs"))


@dataclass
class CompiledGraph:
    spec: GraphSpec
    graph: nx.DiGraph
    registry: Any = None
    source: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    def controller(self, pm=None):
        from perceive.graph.executor import GraphController

        return GraphController(self, pm or self.registry.pm)

    def loop(self, model, options=None, policy=None, **kw):
        """A :class:`~perceive.loop.PerceptionLoop` driven by this graph."""
        from perceive.loop import PerceptionLoop

        return PerceptionLoop(model, registry=self.registry, options=options, policy=policy,
                              controller=self.controller(), **kw)

    def run(self, model, items, options=None, policy=None) -> list:
        """Run ``(image, question)`` pairs through the graph, batched."""
        return self.loop(model, options, policy).ask_batch(list(items))

    def to_mermaid(self) -> str:
        from perceive.graph.render import to_mermaid

        return to_mermaid(self.spec)


def resolve(path: str | Path) -> Path:
    """A graph file path, or the name of a shipped graph (``free_choice``)."""
    p = Path(path)
    if p.exists():
        return p
    shipped = GRAPHS_DIR / (p.name if p.suffix else f"{p.name}.yaml")
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"no graph file {path} (and no shipped graph of that name in {GRAPHS_DIR})")


def check(source: str | Path | dict, registry=None, params: dict | None = None) -> tuple[GraphSpec | None, list]:
    """Every problem of a graph (YAML path, shipped name or dict), without raising."""
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    data = load_yaml(resolve(source)) if not isinstance(source, dict) else source
    data = data or {}
    merged = {**(data.get("params") or {}), **(params or {})}
    data = substitute(data, merged)
    spec, issues = parse(data)
    if spec is None:
        return None, issues
    spec.params = merged
    return spec, validate(spec, registry, data)


def compile_graph(source: str | Path | dict | GraphSpec, registry=None, params: dict | None = None) -> CompiledGraph:
    """Validate and compile; :class:`GraphValidationError` lists every problem at once."""
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    if isinstance(source, GraphSpec):
        spec, issues, label = source, validate(source, registry), source.name
    else:
        spec, issues = check(source, registry, params)
        label = str(resolve(source)) if not isinstance(source, dict) else (source.get("name") or "graph")
    if issues:
        raise GraphValidationError(issues, label)
    return CompiledGraph(spec, to_networkx(spec), registry, label)


load_graph = compile_graph

__all__ = ["CompiledGraph", "GraphIssue", "GraphValidationError", "check", "compile_graph", "load_graph", "resolve"]
