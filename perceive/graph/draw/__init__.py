"""Drawing, apart from running: pictures of graphs and of runs, and Mermaid text. Nothing here
runs a graph (that is :mod:`perceive.graph.executor`).

- :mod:`perceive.graph.draw.layout`: where every node, edge and label of a graph picture goes;
- :mod:`perceive.graph.draw.graph_picture`: draws that layout (``perceive graph show``);
- :mod:`perceive.graph.draw.mermaid`: a graph as Mermaid flowchart text;
- :mod:`perceive.graph.draw.trace_picture`: what a run did, over its image (``--render``).
"""

from perceive.graph.draw.graph_picture import render_graph
from perceive.graph.draw.layout import GraphLayout, layout_graph
from perceive.graph.draw.mermaid import to_mermaid
from perceive.graph.draw.trace_picture import render_trace

__all__ = ["GraphLayout", "layout_graph", "render_graph", "render_trace", "to_mermaid"]
