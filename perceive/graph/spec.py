"""The graph schema (YAML or Python), as pydantic models.

A graph names a ``start`` node and its ``nodes``; each node has a ``kind``:

* ``generate``: the model generates until a perception call closes or its answer ends;
* ``action``: runs a registered action, either the call the model just emitted
  (``action: NAME`` or ``action: "*"`` for whatever it called) or forced with ``args``;
* ``route``: branches, ``switch: call`` (``cases`` keyed by action name, ``"*"`` for any call,
  ``default`` otherwise) or ``when`` predicates over the state (``hops < 3``);
* ``answer``: the end.

``budget`` caps perception hops per sample; a graph with a cycle must set it. ``params`` are
defaults for ``${name}`` placeholders anywhere in the file; ``${max_hops}`` needs none: it is the
run's hop budget (``runtime.max_hops``), see :func:`perceive.graph.compile_graph`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from perceive.prompts import Trigger
from perceive.strict import StrictModel

ANY = "*"


class When(StrictModel):
    """``if``: ``FIELD OP VALUE`` with FIELD one of hops, generated_tokens, answered, last_action;
    OP one of < <= > >= == !=."""

    if_: str = Field(alias="if")
    then: str

    model_config = ConfigDict(populate_by_name=True)


class NodeSpec(StrictModel):
    kind: Literal["generate", "action", "route", "answer"]
    next: str | None = None
    # generate
    max_new_tokens: int | None = None
    # action
    action: str | None = None
    args: dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    encoder: str | None = None
    target: Literal["latest", "root"] | None = None
    # route
    switch: Literal["call"] | None = None
    cases: dict[str, str] = Field(default_factory=dict)
    when: list[When] = Field(default_factory=list)
    default: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> NodeSpec:
        k = self.kind
        if k == "action" and not self.action:
            raise ValueError("an action node needs `action`")
        if k != "action" and (self.action or self.args or self.encoder):
            raise ValueError(f"`action`, `args` and `encoder` belong to action nodes, not {k}")
        if k == "route":
            if self.switch is None and not self.when:
                raise ValueError("a route needs `switch: call` with `cases`, or `when` predicates")
            if self.next is not None:
                raise ValueError("a route leaves through `cases`/`when`/`default`, not `next`")
        elif self.cases or self.when or self.switch or self.default:
            raise ValueError(f"`switch`, `cases`, `when` and `default` belong to route nodes, not {k}")
        if k == "answer" and self.next:
            raise ValueError("an answer node ends the graph; it has no `next`")
        if k == "action" and self.action == ANY and self.args is not None:
            raise ValueError("a forced action needs a concrete action name, not '*'")
        return self

    @property
    def forced(self) -> bool:
        return self.kind == "action" and self.args is not None

    def successors(self) -> list[tuple[str, str]]:
        """(label, target) of every outgoing edge."""
        out = []
        if self.next:
            out.append(("next", self.next))
        out += [(f"call {a}", t) for a, t in self.cases.items()]
        out += [(f"if {w.if_}", w.then) for w in self.when]
        if self.default:
            out.append(("default", self.default))
        return out


class GraphSpec(StrictModel):
    name: str
    description: str = ""
    start: str
    nodes: dict[str, NodeSpec]
    budget: int | None = Field(None, ge=0)
    #: the kind of trigger prompt to append; its text is the model's own (perceive.json prompts)
    trigger: Trigger | None = None
    #: literal text appended to the question; refused for a model that declares other prompts
    prompt_suffix: str = ""
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_prompt(self) -> GraphSpec:
        if self.trigger is not None and self.prompt_suffix:
            raise ValueError("set trigger or prompt_suffix, not both")
        return self


_PARAM = re.compile(r"\$\{(\w+)\}")


def placeholders(data: Any) -> set[str]:
    """The names of the ``${name}`` placeholders anywhere in ``data`` (keys and values)."""
    if isinstance(data, str):
        return set(_PARAM.findall(data))
    if isinstance(data, dict):
        return set().union(*(placeholders(k) | placeholders(v) for k, v in data.items()))
    if isinstance(data, list):
        return set().union(*(placeholders(v) for v in data))
    return set()


def substitute(data: Any, params: dict[str, Any]) -> Any:
    """Replace ``${name}`` in every string (a whole-string placeholder keeps the value's type)."""
    if isinstance(data, str):
        m = _PARAM.fullmatch(data)
        if m and m.group(1) in params:
            return params[m.group(1)]
        return _PARAM.sub(lambda m: str(params.get(m.group(1), m.group(0))), data)
    if isinstance(data, dict):
        items = {substitute(k, params): substitute(v, params) for k, v in data.items()}
        if hasattr(data, "lines"):  # keep YAML line numbers, under substituted keys too
            from perceive.config.safe_yaml import LinedDict as _LinedDict

            return _LinedDict(items, {substitute(k, params): v for k, v in data.lines.items()})
        return items
    if isinstance(data, list):
        return [substitute(v, params) for v in data]
    return data
