"""Running a compiled graph: the graph is the perception session's controller
(:class:`perceive.control.Controller`), for every run: ``free_choice`` is a graph too.

Generation stays in the session (one KV cache, samples batched); at each event the
model produces (a closed call, or its answer) the sample's cursor walks the graph from the
generate node that produced it: routes pick a branch, an action node runs the model's call or
a forced one, and the walk stops at the next generate node (the model continues, seeing the
observation) or at an answer node. ``perceive_before_node`` / ``perceive_after_node`` fire
around every node.
"""

from __future__ import annotations

import logging
from typing import Any

from perceive.config.settings import DEFAULT_GRAPH
from perceive.control import Decision, Dispatch, Finish, Force, Ignore, RunLimits, SampleView, Stop
from perceive.control import merge_action_options as merge_options
from perceive.graph.compiled import CompiledGraph, compile_graph
from perceive.graph.predicates import parse_predicate
from perceive.graph.spec import ANY
from perceive.protocols.calls import PerceptionCall
from perceive.trace import EventType, FinishReason

log = logging.getLogger(__name__)


#: how to raise the run's hop budget, wherever it is set
RAISE_MAX_HOPS = "raise it with --max-hops N (runtime.max_hops; perceive.max_hops in a perceive serve request)"


def hops_budget(limit: int) -> str:
    """Why a call goes unanswered: ``the hop budget is 0 (the model answers without looking)``, or
    ``the hop budget of 2 hops is spent``."""
    if limit == 0:
        return "the hop budget is 0 (the model answers without looking)"
    return f"the hop budget of {limit} hop{'' if limit == 1 else 's'} is spent"


def describe_call(ev: PerceptionCall, width: int = 80) -> str:
    """``the model's 'region_select' call <|region_token_start|><|x_4|>...``: the call as the model wrote
    it, shortened to ``width`` characters."""
    text = " ".join("".join(ev.tokens).split())
    return f"the model's {ev.action!r} call " + (text if len(text) <= width else text[:width - 3] + "...")


class GraphController:
    """The :class:`~perceive.control.Controller` that walks a compiled graph."""

    def __init__(self, graph: CompiledGraph, pm, question_suffix: str = "", prompt_note: str | None = None):
        self.graph = graph
        self.spec = graph.spec
        self.pm = pm
        #: what the graph appends to the question on this model (``CompiledGraph.check_model``)
        self.question_suffix = question_suffix
        self.prompt_note = prompt_note
        self.preds = {(n, i): parse_predicate(w.if_) for n, s in self.spec.nodes.items()
                      for i, w in enumerate(s.when)}
        # a walk may revisit nodes only as often as the budget lets hops happen
        self.visit_cap = (len(self.spec.nodes) + 1) * ((self.spec.budget or 0) + 2)

    @classmethod
    def of(cls, graph: CompiledGraph, pm=None, model=None) -> GraphController:
        """The controller that runs ``graph`` (hooks: ``pm``, default its registry's); with
        ``model``, checked against it first (:meth:`CompiledGraph.check_model`)."""
        suffix, note = graph.check_model(model) if model is not None else (graph.spec.prompt_suffix, None)
        return cls(graph, pm or graph.registry.pm, question_suffix=suffix, prompt_note=note)

    # -- controller protocol ---------------------------------------------------------------------

    def start(self, run: RunLimits, s: SampleView) -> list[Force]:
        st = s.state
        # forced calls before the first turn run after this walk returns: count them meanwhile
        st.update(cursor=self.spec.start, visits=0, answered=False, last_action=None, planned=0)
        if self.question_suffix:
            s.question = s.question + self.question_suffix
        if self.prompt_note:
            s.event(EventType.PROMPT, message=self.prompt_note)
        forced = []
        node = self.spec.start
        while True:
            n = self._enter(s, node)
            if n is None:
                return forced
            if n.kind == "generate" or n.kind == "answer":
                st["cursor"] = node
                self._hook_before(s, node, n.kind)
                st["planned"] = 0
                return forced
            if n.kind == "route":
                node = self._route(s, node, None)
            elif n.kind == "action":
                if not self._budget_ok(run, s, n, node, None):
                    node = n.next
                    continue
                forced.append(self._force(run, n, node))
                st["planned"] += 1
                self._hook_after(s, node, n.kind, f"force {n.action}")
                node = n.next

    def on_call(self, run: RunLimits, s: SampleView, call: PerceptionCall) -> Decision:
        return self._walk(run, s, call)

    def on_answer(self, run: RunLimits, s: SampleView) -> Decision:
        s.state["answered"] = True
        return self._walk(run, s, None)

    # -- the walk ---------------------------------------------------------------------------------

    def _walk(self, run: RunLimits, s: SampleView, ev: PerceptionCall | None) -> Decision:
        # the model's own answer that reaches the end stands (eos); a call that does ends the sample
        end = Finish(FinishReason.EOS) if ev is None else Stop(FinishReason.ANSWER)
        st = s.state
        node = st["cursor"]
        n = self.spec.nodes[node]
        if n.kind == "generate":
            self._hook_after(s, node, "generate", f"call {ev.action}" if ev else "answer")
            node = n.next
        while node is not None:
            n = self._enter(s, node)
            if n is None:
                return Stop(FinishReason.GRAPH_ERROR)
            if n.kind == "route":
                node = self._route(s, node, ev)
                continue
            if n.kind == "answer":
                st["cursor"] = node
                self._hook_after(s, node, "answer", "end")
                return end
            if n.kind == "generate":
                st["cursor"] = node
                self._hook_before(s, node, "generate")
                if ev is None:  # answered, and nothing new to show: the answer stands
                    s.event(EventType.GRAPH, message=f"{node!r} has nothing new to look at")
                    return end
                return Ignore()  # the call goes unanswered; the model keeps generating
            # action
            if not self._budget_ok(run, s, n, node, ev):
                node = n.next
                continue
            st["cursor"] = n.next or node
            st["last_action"] = n.action if n.action != ANY else (ev.action if ev else None)
            if n.forced:
                self._hook_after(s, node, "action", f"force {n.action}")
                self._arrive(s, st["cursor"])
                return self._force(run, n, node)
            if ev is None or (n.action != ANY and n.action != ev.action):
                got = ev.action if ev else "an answer"
                s.event(EventType.GRAPH_ERROR, node=node,
                        message=f"{node!r} runs the model's {n.action!r} call but got {got}")
                return Stop(FinishReason.GRAPH_ERROR)
            self._hook_after(s, node, "action", f"dispatch {ev.action}")
            self._arrive(s, st["cursor"])
            s.node = node
            opts = self._options(run, ev.action, n)
            return Dispatch(options=opts, target=n.target, node=node)
        return end

    def _arrive(self, s, node: str) -> None:
        """After an action the model generates next: if that is a generate node, it begins now."""
        if self.spec.nodes[node].kind == "generate":
            self._hook_before(s, node, "generate")

    def _enter(self, s, node: str):
        st = s.state
        st["visits"] += 1
        if st["visits"] > self.visit_cap:
            s.event(EventType.GRAPH_ERROR, message="node visit cap reached (a cycle without progress?)")
            return None
        s.node = node
        n = self.spec.nodes[node]
        if n.kind not in ("generate",):
            self._hook_before(s, node, n.kind)
        return n

    def _route(self, s, node: str, ev) -> str | None:
        n = self.spec.nodes[node]
        if n.switch == "call":
            nxt = (n.cases.get(ev.action) or n.cases.get(ANY)) if ev is not None else None
            nxt = nxt or n.default
        else:
            state = self._state(s)
            nxt = next((w.then for i, w in enumerate(n.when) if self.preds[(node, i)](state)), n.default)
        self._hook_after(s, node, "route", f"-> {nxt}")
        return nxt

    def _budget_ok(self, run: RunLimits, s: SampleView, n, node: str, ev: PerceptionCall | None) -> bool:
        """Whether action node ``n`` may run one more hop; if not, a ``budget_exhausted`` event says
        what went unanswered (the model's call ``ev``) or was skipped (a forced node), and how to
        raise the budget."""
        limit = self.spec.budget if self.spec.budget is not None else run.max_hops
        if s.hops + s.state.get("planned", 0) < limit:
            return True
        if n.forced or ev is None:
            what, action, tokens = f"node {node!r} (forced {n.action!r}) was skipped", n.action, []
        else:
            what, action, tokens = f"{describe_call(ev)} went unanswered", ev.action, list(ev.tokens)
        # free_choice (and any graph whose budget is its max_hops param) takes --max-hops; others set their own
        how = (RAISE_MAX_HOPS if "max_hops" in self.spec.params
               else f"graph {self.spec.name!r} sets its budget: raise `budget` in the graph")
        s.event(EventType.BUDGET_EXHAUSTED, action=action, max_hops=limit, tokens=tokens,
                message=f"{what}: {hops_budget(limit)}; {how}")
        return False

    def _force(self, run: RunLimits, n, node: str) -> Force:
        args = self.graph.registry.action(n.action).Args.model_validate(n.args)
        return Force(n.action, args, options=self._options(run, n.action, n), target=n.target, node=node)

    def _options(self, run: RunLimits, action: str, n) -> dict:
        """The run's options for ``action`` (the model's defaults under them), then the node's."""
        node = {**n.options, **({"encoder": n.encoder} if n.encoder else {})}
        return merge_options(self.graph.registry, run.action_options, {action: node},
                                    source=f"graph {self.spec.name!r} node options")[action]

    def _state(self, s) -> dict[str, Any]:
        return {"hops": s.hops + s.state.get("planned", 0), "generated_tokens": len(s.generated),
                "answered": s.state.get("answered", False),
                "last_action": s.state.get("last_action"), "visits": s.state.get("visits", 0)}

    # -- hooks ------------------------------------------------------------------------------------

    def _hook_before(self, s, node: str, kind: str) -> None:
        try:
            self.pm.hook.perceive_before_node(graph=self.spec.name, node=node, kind=kind, state=self._state(s))
        except Exception:
            log.exception("perceive_before_node raised; ignored")

    def _hook_after(self, s, node: str, kind: str, outcome: str) -> None:
        try:
            self.pm.hook.perceive_after_node(graph=self.spec.name, node=node, kind=kind, state=self._state(s),
                                             outcome=outcome)
        except Exception:
            log.exception("perceive_after_node raised; ignored")


def run_controller(graph, registry, *, max_hops: int, params: dict | None = None, model=None) -> GraphController:
    """The controller a run uses: ``graph`` (compiled, a shipped name, a YAML path or a dict;
    ``None``: :data:`~perceive.config.settings.DEFAULT_GRAPH`) compiled with ``params`` over the run's hop
    budget ``max_hops`` (the budget of every graph that reads ``${max_hops}``; a graph with a budget
    of its own keeps it), and checked against ``model`` when given. A compiled graph is used as it is."""
    if not isinstance(graph, CompiledGraph):
        graph = compile_graph(DEFAULT_GRAPH if graph is None else graph, registry=registry,
                              params={"max_hops": max_hops, **(params or {})})
    return GraphController.of(graph, registry.pm, model=model)
