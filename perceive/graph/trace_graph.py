"""The trace of a run as a graph: views and hops as nodes, with provenance (which view a call was
made in, which views it produced). JSON-serialisable (networkx node-link data) and reloadable."""

from __future__ import annotations

from typing import Any

import networkx as nx

from perceive.trace import Trace


def trace_to_graph(trace: Trace) -> nx.DiGraph:
    g = nx.DiGraph(question=trace.question, answer=trace.answer, finish_reason=trace.finish_reason)
    w, h = trace.image_size or (0, 0)
    g.add_node("view:root", kind="view", box=[0, 0, w, h], parent=None)
    for hop in trace.hops:
        hid = f"hop:{hop.index}"
        g.add_node(hid, kind="hop", action=hop.action, node=hop.node, args=hop.args, tokens=hop.tokens,
                   box=hop.box, error=hop.error, cached=hop.cached, prefilled_tokens=hop.prefilled_tokens,
                   decoded_tokens=hop.decoded_tokens)
        g.add_edge(f"view:{hop.target}", hid, relation="called in")
        for v in hop.views:
            from perceive.geometry import Frame

            box = Frame.from_dict(v).root_box()
            vid = f"view:{v['id']}"
            g.add_node(vid, kind="view", box=list(box.as_tuple()), parent=v.get("parent"), size=[v["width"],
                                                                                                  v["height"]])
            g.add_edge(hid, vid, relation="produced")
        if hop.index > 0:
            g.add_edge(f"hop:{hop.index - 1}", hid, relation="then")
    return g


def to_json(g: nx.DiGraph) -> dict[str, Any]:
    return nx.node_link_data(g, edges="edges")


def from_json(data: dict[str, Any]) -> nx.DiGraph:
    return nx.node_link_graph(data, edges="edges")


def provenance(g: nx.DiGraph, view: str) -> list[str]:
    """The chain of views from the original image to ``view`` (ids without the ``view:`` prefix)."""
    chain = [view]
    while True:
        parent = g.nodes[f"view:{chain[-1]}"].get("parent")
        if parent is None:
            return list(reversed(chain))
        chain.append(parent)
