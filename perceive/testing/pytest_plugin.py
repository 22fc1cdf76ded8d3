"""pytest fixtures for plugin authors, registered through the ``pytest11`` entry point: any project
with perceive installed has them. See "Testing your plugin" in docs/how-to/write-a-plugin.md.

* ``perceive_registry``: a fresh registry of the installed plugins;
* ``perceive_plugin_registry(*plugins, reference=True)``: a fresh registry with *your* plugins
  registered (objects, ``(name, object)`` pairs, or installed entry-point or distribution names)
  beside perceive's reference plugins and nothing else installed; fails the test, with the
  reasons, if any plugin is broken;
* ``perceive_conformance(action, registry=None, **kw)``: runs the conformance kit and fails the
  test with the readable report if any check fails; returns the report;
* ``perceive_photo``: a real RGB photo;
* ``perceive_tiny_model(registry=None, branches=(), base="qwen2_vl")``: a tiny random-weight VPT
  model whose tokenizer holds every registered action's tokens; ``branches``: the re-encode
  branches it carries (your features plugin's);
* ``perceive_run_span(model, span, ...)``: runs the perception loop with the model made to emit
  ``span`` first (the rest of the loop is real: parsing, dispatch, observation) and returns the
  :class:`~perceive.loop.Answer`; ``answer.trace.hops`` holds each call.

Fixtures that take a registry default to the test's ``perceive_registry``, so a model built by
``perceive_tiny_model()`` and a span run by ``perceive_run_span`` see the same plugins.
"""

from __future__ import annotations

from typing import Any

import pytest

#: the distribution that ships perceive's reference plugins
REFERENCE_DIST = "perceive"


@pytest.fixture
def perceive_registry():
    """A fresh registry of the installed plugins (subject to ``PERCEIVE_PLUGINS`` and the other
    switches)."""
    from perceive.plugins import load_registry

    return load_registry()


@pytest.fixture
def perceive_plugin_registry():
    """``perceive_plugin_registry(*plugins, reference=True)``: a fresh registry holding perceive's
    reference plugins (unless ``reference=False``) and ``plugins``: plugin objects (a module, an
    instance with hookimpls), ``(name, object)`` pairs, or the names of installed entry points or
    distributions. Other installed plugins stay out. A broken plugin, or a name that is not
    installed, fails the test with the reasons."""
    from perceive.plugins import load_registry

    def make(*plugins: Any, reference: bool = True):
        names = [p for p in plugins if isinstance(p, str)]
        objects = [p for p in plugins if not isinstance(p, str)]
        only = ([REFERENCE_DIST] if reference else []) + names
        reg = load_registry(objects, autoload=True, only=only)
        found = {n for p in reg.plugins.values() for n in (p.name, p.dist)}
        problems = [f"no installed plugin named {n!r} (is its package installed? `pip install -e .`)"
                    for n in names if n not in found]
        problems += [f"plugin {p.name!r}" + (f" (distribution {p.dist})" if p.dist else "") + ": "
                     + "; ".join(p.errors) for p in reg.broken]
        if problems:
            pytest.fail("\n".join(["the registry is not clean:", *problems]), pytrace=False)
        return reg

    return make


@pytest.fixture
def perceive_photo():
    """A real RGB photo (scikit-image's astronaut), a fresh copy."""
    from perceive.conformance import real_photos

    return real_photos()["astronaut"]


@pytest.fixture
def perceive_conformance(perceive_registry):
    """``perceive_conformance(action, registry=None, **kw)``: the conformance kit on ``action``
    (an :class:`~perceive.Action` or a registered name; ``kw`` as for
    :func:`perceive.conformance.check_action`, e.g. ``quick=True``). Fails the test with the
    report if a check fails; returns the report."""
    from perceive.conformance import check_action

    def run(action, registry=None, **kw):
        report = check_action(action, registry=registry or perceive_registry, **kw)
        if not report.ok:
            pytest.fail(report.render(), pytrace=False)
        return report

    return run


@pytest.fixture
def perceive_tiny_model(perceive_registry):
    """``perceive_tiny_model(registry=None, branches=(), base="qwen2_vl", seed=0)``: a tiny
    random-weight VPT model (Qwen2-VL or Qwen2.5-VL base, CPU, a second to build) with its
    tokenizer and image processor. The tokenizer holds the region grid tokens and every token of
    every action in ``registry``, so the model can emit any of their spans; ``branches`` names the
    re-encode branches the model carries (a features plugin's branch, so its features are
    projected and injected)."""
    from perceive.testing.tiny import build_tokenizer, tiny_vpt_model

    def make(registry=None, branches=(), base: str = "qwen2_vl", seed: int = 0):
        registry = registry or perceive_registry
        tokens = [t for r in registry.actions.values() if r.obj.grammar is not None
                  for t in (r.obj.grammar.start, r.obj.grammar.end, *r.obj.grammar.inner)]
        tokenizer = build_tokenizer(branches=list(branches), extra_tokens=tokens, registry=registry)
        return tiny_vpt_model(base, branches=list(branches), seed=seed, tokenizer=tokenizer, registry=registry)

    return make


@pytest.fixture
def perceive_run_span(perceive_registry, perceive_photo):
    """``perceive_run_span(model, span, image=None, question="What is in the image?", registry=None,
    **options)``: the perception loop on one sample, the model made to emit ``span`` (a string of
    tokens, e.g. ``"<|quadrant_start|><|quadrant_q1|><|quadrant_end|>"``) before it chooses for
    itself. ``image`` defaults to ``perceive_photo``; ``options`` are
    :class:`~perceive.loop.LoopOptions` fields (``max_new_tokens`` defaults to the span's length
    plus 8, ``action_options={"quadrant": {...}}``). Returns the
    :class:`~perceive.loop.Answer`: ``answer.trace.hops[0]`` is your call, with its ``action``,
    ``args``, ``views`` or ``features``, and ``error`` (None when it ran)."""
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.loop.scripted import ScriptedPolicy, span_tokens

    def run(model, span: str, image=None, question: str = "What is in the image?", registry=None, **options):
        tokenizer = model.tokenizer
        tokens = span_tokens(tokenizer, span)
        unknown = [t for t in tokens if t == tokenizer.unk_token]
        if unknown:
            pytest.fail(f"the model's tokenizer cannot spell {span!r}: build the model with "
                        "perceive_tiny_model(registry=...) from a registry that holds the action", pytrace=False)
        options.setdefault("max_new_tokens", len(tokens) + 8)
        loop = PerceptionLoop(model, registry=registry or perceive_registry, options=LoopOptions(**options),
                              policy=ScriptedPolicy(tokenizer, {0: tokens}))
        return loop.ask(image if image is not None else perceive_photo, question)

    return run
