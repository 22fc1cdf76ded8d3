"""Deprecated: moved to :mod:`perceive.graph.draw.layout`. Importing a name from here works for one
release and warns."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, dict.fromkeys(
    ["DrawnEdge", "DrawnNode", "GraphLayout", "Point", "Rect", "graph_edges", "layout_graph", "path_distance",
     "point_segment_distance", "rect_distance"], "perceive.graph.draw.layout"))
__all__ = __dir__()  # a star import still works: each name comes through its warning
