"""Deprecated: moved to :mod:`perceive.graph.draw` (``render_trace``: ``trace_picture``,
``render_graph``: ``graph_picture``, ``to_mermaid``: ``mermaid``, the layout's names: ``layout``).
Importing a name from here works for one release and warns."""

from perceive.deprecation import moved_names

_LAYOUT = ["DrawnEdge", "DrawnNode", "GraphLayout", "Point", "Rect", "graph_edges", "layout_graph", "path_distance",
           "point_segment_distance", "rect_distance"]
__getattr__, __dir__ = moved_names(__name__, {
    **dict.fromkeys(["COLORS", "render_trace"], "perceive.graph.draw.trace_picture"),
    **dict.fromkeys(["EDGE_COLOR", "FILLS", "LABEL_COLOR", "render_graph"], "perceive.graph.draw.graph_picture"),
    **dict.fromkeys(["SHAPES", "to_mermaid"], "perceive.graph.draw.mermaid"),
    **dict.fromkeys(_LAYOUT, "perceive.graph.draw.layout"),
})
__all__ = __dir__()  # a star import still works: each name comes through its warning
