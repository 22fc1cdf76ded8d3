"""Perception graphs: compose generation, perception actions and routes, validated before
anything runs."""

from perceive.graph.builder import GraphBuilder
from perceive.graph.compiled import CompiledGraph, check, compile_graph, load_graph, resolve
from perceive.graph.executor import run_controller
from perceive.graph.spec import GraphSpec, NodeSpec
from perceive.graph.validate import GraphIssue, GraphValidationError

__all__ = ["CompiledGraph", "GraphBuilder", "GraphIssue", "GraphSpec", "GraphValidationError", "NodeSpec", "check",
           "compile_graph", "load_graph", "resolve", "run_controller"]
