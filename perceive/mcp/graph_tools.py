"""One ``perceive mcp`` tool per perception graph served (``graph_<name>``): the whole perception loop on
the run config's model, as ``perceive ask`` / ``perceive graph run`` runs it (``loop_from_config(cfg,
graph=compile_graph(...)).ask(image, question)``), answering with the answer and the trace.

The model loads on the first graph call (seconds to minutes, as ``perceive ask``'s start), then stays for
every graph tool; graph calls run one at a time. A run config with ``remote.url`` drives that endpoint
instead, and loads nothing.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from perceive.errors import ActionInputError, ConfigError, did_you_mean
from perceive.mcp.images import ImageStore
from perceive.mcp.results import TextPart, ToolResult, ToolSpec, box_text, error_result
from perceive.mcp.schemas import IMAGE, graph_schema

log = logging.getLogger("perceive.mcp")
#: a graph tool's name: this, then the graph's name in lower case, other characters as ``_``
PREFIX = "graph_"
QUESTION = "question"


def tool_name(graph_name: str) -> str:
    """``graph_region_then_answer`` for ``region_then_answer`` (an MCP tool name: letters, digits, ``_``)."""
    return PREFIX + (re.sub(r"[^a-z0-9_]+", "_", graph_name.lower()).strip("_") or "graph")


def shipped_graphs() -> list[str]:
    """The names of the graphs perceive ships (graphs/*.yaml), sorted."""
    from perceive.graph.compiled import GRAPHS_DIR

    return sorted(p.stem for p in Path(GRAPHS_DIR).glob("*.yaml"))


def _hop_lines(trace) -> list[str]:
    """One line per hop, as ``perceive ask`` prints them (boxes in the image's pixels)."""
    lines = []
    for h in trace.hops:
        box = f" -> box {box_text([h.box[k] for k in ('x0', 'y0', 'x1', 'y1')])}" if h.box else ""
        lines.append(f"  hop {h.index + 1} [{h.node}]: {h.action} in view {h.target}{box}"
                     + (f", error: {h.error['message']}" if h.error else ""))
    return lines


class GraphTools:
    """The graph tools of run config ``cfg`` (``mcp.graphs``; unset: the run's ``graph`` and every shipped
    graph), the model they share, and their calls."""

    def __init__(self, cfg, registry, store: ImageStore):
        self.cfg, self.registry, self.store = cfg, registry, store
        self.graphs = self._compile()
        path = cfg.model.path
        if self.graphs and cfg.remote is None and path is not None and not Path(path).is_dir():
            # found now, not at an agent's first graph call
            raise ConfigError(f"{cfg.source}: model folder not found: {path} (the graph tools run it)",
                              hint="give --model DIR (a model folder), or mcp.graphs: [] to serve the actions only")
        self._model: Any = None
        self._loops: dict[str, Any] = {}
        self._lock = threading.Lock()  # one model: graph calls run one at a time

    def _compile(self) -> dict[str, Any]:
        """``{tool name: compiled graph}``. A graph the config lists that does not compile is a
        :class:`ConfigError`; a shipped graph the installed plugins cannot run is left out (logged)."""
        from perceive.graph import GraphValidationError, compile_graph

        cfg = self.cfg
        listed = cfg.mcp.graphs is not None
        sources = list(cfg.mcp.graphs) if listed else [cfg.graph, *shipped_graphs()]
        graphs: dict[str, Any] = {}
        for i, source in enumerate(sources):
            named = listed or i == 0  # the config names it (not only shipped)
            where = f"mcp.graphs[{i}]" if listed else "graph"
            try:
                g = compile_graph(source, registry=self.registry, params=cfg.graph_params())
            except (GraphValidationError, FileNotFoundError, ConfigError) as exc:
                if named:
                    raise ConfigError(f"{cfg.source}: {where} ({source}) cannot be served: {exc}",
                                      hint="`perceive graph validate GRAPH` lists its problems; "
                                           "`perceive graph show` the shipped ones") from None
                log.warning("perceive mcp: shipped graph %s left out: %s", source, str(exc).splitlines()[0])
                continue
            name = tool_name(g.name)
            if name in graphs:
                if listed:
                    raise ConfigError(f"{cfg.source}: {where} ({source}) is served as {name}, as an earlier one is",
                                      hint="list each graph once; graphs with the same name need distinct names")
                continue  # the run's own graph is also shipped: served once
            graphs[name] = g
        return graphs

    # -- tools -------------------------------------------------------------------------------------

    def _runs_on(self) -> str:
        cfg = self.cfg
        if cfg.remote is not None:
            return f"the model served at {', '.join(cfg.remote.urls)}"
        return f"the model {cfg.model.path.name}" if cfg.model.path is not None else "the run's model"

    def specs(self) -> list[ToolSpec]:
        out = []
        for name, g in self.graphs.items():
            own = (g.spec.description or f"The perception graph {g.name}.").strip()
            out.append(ToolSpec(name, f"{own}\n\nAnswers `question` about the image `image` names by running "
                                      f"perceive's perception loop (graph {g.name}) on {self._runs_on()}, as `perceive "
                                      "ask` does. Returns the answer and the trace: each hop's action and box in that "
                                      "image's pixels. The first graph call loads the model.", graph_schema(),
                                open_world=self.cfg.remote is not None))
        return out

    # -- calls -------------------------------------------------------------------------------------

    def _read(self, name: str, arguments: Mapping[str, Any]) -> tuple[Any, bool, str]:
        unknown = [k for k in arguments if k not in (IMAGE, QUESTION)]
        if unknown:
            raise ActionInputError(f"{name}: unknown argument(s) {', '.join(map(repr, unknown))}",
                                   hint=did_you_mean(str(unknown[0]), [IMAGE, QUESTION]) or "it takes image, question")
        ref, question = arguments.get(IMAGE), arguments.get(QUESTION)
        if not isinstance(ref, str) or not isinstance(question, str):
            raise ActionInputError(f"{name}: `image` and `question` must both be given, as strings",
                                   hint="image: an id (register_image gives one), a data URL or an allowed path")
        target, registered = self.store.resolve(ref, self.cfg.mcp.allow_local_images)
        return target, registered, question

    def _load_model(self):
        """The run's model, loaded once (as ``PerceptionLoop.from_config`` loads it), torch's threads set
        first as ``perceive ask`` sets them."""
        if self._model is None:
            cfg = self.cfg
            if cfg.model.path is None:
                raise ConfigError("the graph tools need a model, and the run config names none",
                                  hint="start perceive mcp with --model DIR, or set model.path (or remote.url) in "
                                       "its --config")
            from perceive.model import load_model
            from perceive.threads import set_torch_threads

            set_torch_threads(cfg.runtime.threads)
            self._model = load_model(cfg.model.path, device=cfg.device,
                                     dtype=None if cfg.dtype == "auto" else cfg.dtype)
        return self._model

    def _loop(self, name: str):
        if name not in self._loops:
            from perceive.loop_factory import loop_from_config

            model = self._load_model() if self.cfg.remote is None else None
            self._loops[name] = loop_from_config(self.cfg, registry=self.registry, graph=self.graphs[name],
                                                 model=model)
        return self._loops[name]

    def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Answer the question of ``arguments`` with the graph tool ``name``. Raises
        :class:`~perceive.errors.PerceiveError` for a call it cannot run; a sample that failed on the way
        is the tool error, with its trace."""
        target, registered, question = self._read(name, arguments)
        with self._lock:
            answer = self._loop(name).ask(target.image, question)
        trace = json.loads(answer.trace.to_json())  # as a client reads it (tuples as lists), as ask --json prints it
        g = self.graphs[name]
        structured = {"answer": answer.text, "graph": g.name, "image": target.id,
                      "registered": target.group if registered else None, "trace": trace}
        if answer.error:
            err = answer.error
            return error_result(err["message"], err.get("code", "internal"), structured, hint=err.get("hint"))
        head = [f"registered the image as {target.group}"] if registered else []
        hops = _hop_lines(answer.trace)
        summary = [*head, f"graph {g.name} on {target.id}: {len(hops)} hop(s); boxes in {target.id}'s pixels",
                   *hops]
        # the trace is in the structured content only: agents that feed every text part to their model
        # (Qwen-Agent, lmms-eval) would read a page of JSON
        return ToolResult([TextPart(answer.text or "(no answer)"), TextPart("\n".join(summary))], structured)


__all__ = ["PREFIX", "GraphTools", "shipped_graphs", "tool_name"]
