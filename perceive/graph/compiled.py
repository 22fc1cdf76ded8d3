"""Loading, validating and compiling graphs (:mod:`perceive.graph.executor` runs them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from perceive.config import load_yaml
from perceive.config.settings import LoopRuntime
from perceive.errors import ConfigError
from perceive.graph.spec import ANY, GraphSpec, placeholders, substitute
from perceive.graph.validate import GraphIssue, GraphValidationError, parse, to_networkx, validate

GRAPHS_DIR = Path(os.environ.get("PERCEIVE_GRAPHS_DIR", Path(__file__).resolve().parents[2] / "graphs"))
#: the params a run gives every graph that reads them, declared or not, under the graph's own
#: defaults and the given params: ``max_hops``, the run's hop budget. A run gives its own
#: (``runtime.max_hops``: :func:`~perceive.graph.executor.run_controller`,
#: ``PerceiveConfig.graph_params``); these defaults apply where none is given (``perceive graph
#: validate``, ``compile_graph`` in Python)
RUN_PARAMS: dict[str, Any] = {"max_hops": LoopRuntime.model_fields["max_hops"].default}


@dataclass
class CompiledGraph:
    spec: GraphSpec
    graph: nx.DiGraph
    registry: Any = None
    source: str = ""
    #: what it was compiled from (a path, a shipped name, a dict or a GraphSpec) and with which params
    origin: Any = None
    given_params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def with_params(self, params: dict[str, Any]) -> CompiledGraph:
        """This graph compiled again with ``params`` over the ones it was compiled with (a request's
        own ``max_hops`` or params over the run's); itself when there are none, or when it was built
        in Python (a ``GraphSpec`` has no placeholders)."""
        if not params or self.origin is None or isinstance(self.origin, GraphSpec):
            return self
        return compile_graph(self.origin, self.registry, params={**self.given_params, **params})

    def check_model(self, model) -> tuple[str, str | None]:
        """What this graph appends to the question on ``model`` (see :mod:`perceive.prompts`), and
        a note when it leaves a trigger out. Raises :class:`~perceive.errors.ConfigError` when the
        graph cannot run on the model: a features action it has no branch for, a view action it was not
        trained to read (perceive.json ``views``), or a literal ``prompt_suffix`` it was not trained with.

        A text action runs on any model (its turn is plain text the tokenizer spells); when the model
        lists the observations it was trained to read (``views``) and the text action is not among
        them, its text is kept in the trace and not shown (a ``not_shown`` event), and the note says so."""
        from perceive.errors import ConfigError
        from perceive.prompts import question_suffix

        cfg = model.config
        have = {b.action for b in cfg.branches.values()}
        unread: list[str] = []
        for name, n in self.spec.nodes.items():
            if n.kind != "action" or n.action == ANY or n.action not in self.registry.actions:
                continue
            if self.registry.action(n.action).observation == "features" and n.action not in have:
                raise ConfigError(
                    f"graph {self.name!r} node {name!r} runs {n.action!r}, but the model has no {n.action!r} branch "
                    f"(its perceive.json branches: {sorted(have) or 'none'})",
                    hint="use a model trained with that branch, or a graph without it (free_choice)")
            if self.registry.action(n.action).observation == "view" and cfg.views is not None \
                    and n.action not in cfg.views:
                raise ConfigError(
                    f"graph {self.name!r} node {name!r} shows {n.action!r} views, but the model was trained to read "
                    f"only {cfg.views} views (perceive.json views)",
                    hint="use a graph with those actions (free_choice lets the model choose), or another model")
            if self.registry.action(n.action).observation == "text" and cfg.views is not None \
                    and n.action not in cfg.views and n.action not in unread:
                unread.append(n.action)
        suffix, note = question_suffix(cfg.prompts, self.spec.trigger, self.spec.prompt_suffix, self.name)
        if unread:
            text = (f"graph {self.name!r} runs {', '.join(map(repr, unread))}, whose text turns the model was never "
                    f"trained to read (perceive.json views: {cfg.views}): the text goes to the trace, not the model")
            note = f"{note}; {text}" if note else text
        return suffix, note

    def to_mermaid(self) -> str:
        from perceive.graph.draw.mermaid import to_mermaid

        return to_mermaid(self.spec)


def resolve(path: str | Path) -> Path:
    """A graph file path, or the name of a shipped graph (``free_choice``, ``iterative_zoom``, ...)."""
    p = Path(path)
    if p.exists():
        return p
    shipped = GRAPHS_DIR / (p.name if p.suffix else f"{p.name}.yaml")
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"no graph file {path} (and no shipped graph of that name in {GRAPHS_DIR})")


def check(source: str | Path | dict, registry=None, params: dict | None = None) -> tuple[GraphSpec | None, list]:
    """Every problem of a graph (YAML path, shipped name or dict), without raising. Its
    ``${name}`` values are ``params`` over the graph's own ``params`` over :data:`RUN_PARAMS`."""
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    try:
        data = load_yaml(resolve(source)) if not isinstance(source, dict) else source
    except ConfigError as exc:  # unreadable, malformed, or over perceive.config.safe_yaml's limits
        detail = getattr(exc, "detail", exc.message)
        return None, [GraphIssue("yaml", f"{detail}; {exc.hint}" if exc.hint else detail,
                                 line=getattr(exc, "line", None))]
    data = {} if data is None else data
    if not isinstance(data, dict):
        return None, [GraphIssue("schema", f"a graph is a mapping (name, start, nodes, ...), not a "
                                 f"{type(data).__name__}")]
    if not isinstance(data.get("params") or {}, dict):
        return None, [GraphIssue("schema", "params: must be a mapping of name: default value",
                                 line=getattr(data, "lines", {}).get("params"))]
    declared = dict(data.get("params") or {})
    used = placeholders({k: v for k, v in data.items() if k != "params"}) | set(declared)
    merged = {**{k: v for k, v in RUN_PARAMS.items() if k in used}, **declared, **(params or {})}
    data = substitute(data, merged)
    spec, issues = parse(data)
    if spec is None:
        return None, issues
    # the params this graph reads: a run gives every graph its max_hops, which most ignore
    spec.params = {k: v for k, v in merged.items() if k in used}
    return spec, validate(spec, registry, data)


def compile_graph(source: str | Path | dict | GraphSpec, registry=None, params: dict | None = None) -> CompiledGraph:
    """Validate and compile; :class:`GraphValidationError` lists every problem at once. ``params``
    fill the graph's ``${name}`` placeholders over its own defaults; ``${max_hops}`` is the run's hop
    budget (a run gives ``runtime.max_hops``; default :data:`RUN_PARAMS`) even where the graph
    declares no default for it, and a run's ``max_hops`` overrides the default a graph declares."""
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    if isinstance(source, GraphSpec):
        spec, issues, label = source, validate(source, registry), source.name
    else:
        spec, issues = check(source, registry, params)
        label = str(resolve(source)) if not isinstance(source, dict) else (source.get("name") or "graph")
    if issues:
        raise GraphValidationError(issues, label)
    return CompiledGraph(spec, to_networkx(spec), registry, label, source, dict(params or {}))


load_graph = compile_graph

__all__ = ["CompiledGraph", "GraphIssue", "GraphValidationError", "check", "compile_graph", "load_graph", "resolve"]
