"""Validate a graph before anything runs, and report every problem at once.

Each :class:`GraphIssue` names the node and, for YAML files, the line. Checks: the schema,
unknown action and encoder names (with the closest registered names), edges to unknown nodes,
unreachable nodes, nodes with no path to an answer, cycles without a hop budget, and inputs
no earlier node produces (an action that runs the model's call where no call is guaranteed, a
route on the call with no generate before it, a forced re-encode after the model has spoken).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import networkx as nx
from pydantic import ValidationError

from perceive.errors import closest
from perceive.graph.spec import ANY, GraphSpec


@dataclass(frozen=True)
class GraphIssue:
    code: str
    message: str
    node: str | None = None
    line: int | None = None

    def render(self, source: str = "") -> str:
        where = source + (f":{self.line}" if self.line else "")
        node = f" node '{self.node}':" if self.node else ""
        return f"{where}:{node} {self.message} [{self.code}]" if where else f"{node} {self.message} [{self.code}]"


class GraphValidationError(ValueError):
    def __init__(self, issues: list[GraphIssue], source: str = ""):
        self.issues = issues
        self.source = source
        super().__init__("\n".join(i.render(source) for i in issues))


def _line(data: Any, *keys) -> int | None:
    line = None
    for k in keys:
        lines = getattr(data, "lines", None)
        if lines is None or k not in lines:
            break
        line = lines[k]
        data = data[k]
    return line


def parse(data: Any) -> tuple[GraphSpec | None, list[GraphIssue]]:
    """Schema check. Node-level errors are collected per node so all of them are reported."""
    issues: list[GraphIssue] = []
    try:
        return GraphSpec.model_validate(data), []
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            node = loc[1] if len(loc) > 1 and loc[0] == "nodes" else None
            field = ".".join(str(p) for p in loc)
            msg = err["msg"].removeprefix("Value error, ")
            issues.append(GraphIssue("schema", f"{field}: {msg}", node, _line(data, *loc[:3]) or _line(data, *loc[:2])))
    return None, issues


def validate(spec: GraphSpec, registry, data: Any = None) -> list[GraphIssue]:
    """Every structural and naming problem of ``spec`` (empty when it can run)."""
    issues: list[GraphIssue] = []
    nodes = spec.nodes

    def line(name, *field):
        return _line(data, "nodes", name, *field) or _line(data, "nodes", name)

    def add(code, msg, node=None, *field):
        issues.append(GraphIssue(code, msg, node, line(node, *field) if node else _line(data, field[0] if field
                                                                                      else "start")))

    def hint(name, known):
        c = closest(name, known)
        return f" (did you mean {' or '.join(repr(x) for x in c)}?)" if c else ""

    if spec.start not in nodes:
        add("unknown-node", f"start node {spec.start!r} does not exist{hint(spec.start, nodes)}", None, "start")
    actions, encoders = registry.actions, registry.encoders
    for name, n in nodes.items():
        for label, target in n.successors():
            if target not in nodes:
                add("unknown-node", f"{label} leads to {target!r}, which does not exist{hint(target, nodes)}", name)
        if n.kind == "action" and n.action != ANY and n.action not in actions:
            add("unknown-action", f"no registered action {n.action!r}{hint(n.action, actions)}", name, "action")
        if n.encoder and n.encoder not in encoders:
            add("unknown-encoder", f"no registered encoder {n.encoder!r}{hint(n.encoder, encoders)}", name, "encoder")
        for case in n.cases:
            if case != ANY and case not in actions:
                add("unknown-action", f"route case {case!r} is not a registered action{hint(case, actions)}",
                    name, "cases")
        for w in n.when:
            from perceive.graph.predicates import parse_predicate

            try:
                parse_predicate(w.if_)
            except ValueError as exc:
                add("bad-predicate", str(exc), name, "when")
        if n.kind == "action" and (n.options or n.encoder):
            issues += _option_issues(n, name, registry, line)
        if n.forced and n.action in actions:
            action = actions[n.action].obj
            try:
                action.Args.model_validate(n.args)
            except ValidationError as exc:
                add("bad-args", f"args do not fit {n.action}: {exc.errors()[0]['msg']}", name, "args")
    g = to_networkx(spec)
    if spec.start in nodes:
        reach = nx.descendants(g, spec.start) | {spec.start}
        for name in nodes:
            if name not in reach:
                add("unreachable", "no path from the start reaches this node", name)
        answers = [n for n, s in nodes.items() if s.kind == "answer"]
        if not answers:
            add("no-answer", "the graph has no answer node", None, "nodes")
        can_end = set(answers).union(*(nx.ancestors(g, a) for a in answers)) if answers else set()
        for name in sorted(reach - can_end):
            if nodes[name].kind != "answer":
                add("no-path-to-answer", "no path from here reaches an answer node", name)
        if not any(nodes[n].kind == "generate" for n in reach):
            add("no-generate", "the model never generates: add a generate node", None, "nodes")
        if spec.budget is None:
            for cycle in nx.simple_cycles(g):
                add("cycle-without-budget", f"cycle {' -> '.join(cycle + cycle[:1])} needs a hop budget: set "
                    "`budget:` on the graph", cycle[0])
                break
        issues += _dataflow(spec, g, line, registry)
    return issues


def _option_issues(n, name: str, registry, line) -> list[GraphIssue]:
    """A node's ``options`` (and ``encoder``) against the action's ``Options`` model, and an
    encoder the action cannot use; for ``action: "*"``, against every action. The same checks,
    and messages, as a run config's (:func:`perceive.actions.option_problems`,
    :func:`perceive.actions.encoder_problem`)."""
    from perceive.actions import encoder_problem, option_problems

    names = [n.action] if n.action != ANY else list(registry.actions)
    spec = registry.encoders[n.encoder].obj if n.encoder in registry.encoders else None
    out = []
    for a in names:
        if a not in registry.actions:
            continue
        action = registry.actions[a].obj
        bad_encoder = encoder_problem(action, n.encoder, spec) if n.encoder else None
        if bad_encoder:
            out.append(GraphIssue("bad-encoder", bad_encoder, name, line(name, "encoder")))
        # the encoder reaches the action as its `encoder` option, as at run time
        opts = {**n.options, **({"encoder": n.encoder} if n.encoder and not bad_encoder else {})}
        for loc, msg in option_problems("action", a, getattr(action, "Options", None), opts)[1]:
            where = "encoder" if loc == ("encoder",) and "encoder" not in n.options else "options"
            field = "encoder" if where == "encoder" else ".".join(map(str, ("options", *loc)))
            out.append(GraphIssue("bad-options", f"{field}: {msg}", name, line(name, where)))
    return out


def _dataflow(spec: GraphSpec, g: nx.DiGraph, line, registry) -> list[GraphIssue]:
    """Must-analysis of what is known on entry to each node: ``emitted`` (a generate ran since
    the last action), ``call:X`` (a route case guaranteed the model called X), ``spoken`` (some
    generate ran before)."""
    nodes = spec.nodes
    universe = {"emitted", "spoken", f"call:{ANY}"} | {f"call:{a}" for n in nodes.values() for a in n.cases}
    known = {n: set(universe) for n in nodes}
    known[spec.start] = set()

    def out(name: str, label: str) -> set[str]:
        n, facts = nodes[name], set(known[name])
        if n.kind == "generate":
            return {"emitted", "spoken"}
        if n.kind == "action":
            return facts - {"emitted"} - {f for f in facts if f.startswith("call:")}
        if n.kind == "route" and label.startswith("call "):
            return facts | {f"call:{label[5:]}"}
        if n.kind == "route" and label == "default" and n.switch == "call":
            return facts - {f for f in facts if f.startswith("call:")}
        return facts

    changed = True
    while changed:
        changed = False
        for name in nodes:
            if name == spec.start:
                continue
            preds = [(p, d["label"]) for p, _, d in g.in_edges(name, data=True)]
            if not preds:
                continue
            new = set.intersection(*(out(p, lab) for p, lab in preds))
            if new != known[name]:
                known[name] = new
                changed = True
    issues = []
    for name, n in nodes.items():
        facts = known[name]
        features = n.kind == "action" and n.action in registry.actions \
            and registry.action(n.action).observation == "features"
        if n.forced and features and "spoken" in facts:
            issues.append(GraphIssue(
                "late-reencode", f"forces {n.action!r} after the model has spoken: a forced re-encode opens the first "
                "assistant turn, so it must come before every generate node", name, line(name, "action")))
        if n.kind == "route" and n.switch == "call" and "emitted" not in facts:
            issues.append(GraphIssue("missing-input", "routes on the model's call, but no generate node runs "
                                     "before it on every path", name, line(name, "switch")))
        if n.kind == "action" and not n.forced:
            # "*" runs whatever was called: any guaranteed call will do
            ok = any(f.startswith("call:") for f in facts) if n.action == ANY else f"call:{n.action}" in facts
            if not ok:
                issues.append(GraphIssue(
                    "missing-input", f"runs the model's {n.action!r} call, but no route case guarantees that call "
                    "on every path (route `switch: call` with a case for it, right after a generate)", name,
                    line(name, "action")))
    return issues


def to_networkx(spec: GraphSpec) -> nx.DiGraph:
    g = nx.DiGraph(name=spec.name, budget=spec.budget)
    for name, n in spec.nodes.items():
        g.add_node(name, kind=n.kind, spec=n)
    for name, n in spec.nodes.items():
        for label, target in n.successors():
            if target in spec.nodes:
                g.add_edge(name, target, label=label)
    return g
