"""Scripted perception spans for tests: :mod:`perceive.loop.scripted`, re-exported here for the
tests and benchmarks that import it from ``perceive.testing`` (production code imports
:mod:`perceive.loop.scripted`)."""

from perceive.loop.scripted import ScriptedPolicy, span_tokens

__all__ = ["ScriptedPolicy", "span_tokens"]
