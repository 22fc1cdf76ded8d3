"""Building graphs in Python. ``compile()`` runs the same validation as YAML files.

>>> g = (GraphBuilder("region_then_answer", budget=1)
...      .add_node("ask", "generate").add_node("which", "route", switch="call")
...      .add_node("crop", "action", action="region_select").add_node("answer", "generate")
...      .add_node("done", "answer")
...      .add_edge("ask", "which").add_conditional_edges("which", cases={"region_select": "crop"}, default="done")
...      .add_edge("crop", "answer").add_edge("answer", "done"))
>>> compiled = g.compile()
"""

from __future__ import annotations

from typing import Any

from perceive.graph.spec import GraphSpec


class GraphBuilder:
    def __init__(self, name: str, *, start: str | None = None, budget: int | None = None, trigger: str | None = None,
                 prompt_suffix: str = "", description: str = ""):
        self.data: dict[str, Any] = {"name": name, "description": description, "budget": budget, "trigger": trigger,
                                     "prompt_suffix": prompt_suffix, "nodes": {}}
        self.start = start

    def add_node(self, name: str, kind: str, **fields: Any) -> GraphBuilder:
        if name in self.data["nodes"]:
            raise ValueError(f"node {name!r} already present")
        self.data["nodes"][name] = {"kind": kind, **fields}
        if self.start is None:
            self.start = name
        return self

    def _node(self, name: str) -> dict:
        if name not in self.data["nodes"]:
            raise ValueError(f"add_node({name!r}) first")
        return self.data["nodes"][name]

    def add_edge(self, src: str, dst: str) -> GraphBuilder:
        node = self._node(src)
        if node.get("next"):
            raise ValueError(f"{src!r} already leads to {node['next']!r}; use a route node to branch")
        node["next"] = dst
        return self

    def add_conditional_edges(self, src: str, *, cases: dict[str, str] | None = None,
                              when: list[tuple[str, str]] | None = None, default: str | None = None) -> GraphBuilder:
        node = self._node(src)
        if node["kind"] != "route":
            raise ValueError(f"{src!r} is a {node['kind']} node; conditional edges leave route nodes")
        if cases:
            node["switch"] = "call"
            node.setdefault("cases", {}).update(cases)
        if when:
            node.setdefault("when", []).extend({"if": cond, "then": dst} for cond, dst in when)
        if default:
            node["default"] = default
        return self

    def set_start(self, name: str) -> GraphBuilder:
        self.start = name
        return self

    def spec_data(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.data.items() if v is not None}, "start": self.start}

    def compile(self, registry=None):
        from perceive.graph.compiled import compile_graph

        return compile_graph(self.spec_data(), registry)

    def spec(self) -> GraphSpec:
        return GraphSpec.model_validate(self.spec_data())
