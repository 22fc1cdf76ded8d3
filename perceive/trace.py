"""The trace of one sample: data, not log lines. JSON-serialisable and reloadable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class FinishReason(str, Enum):
    """Why a sample stopped. ``docs/reference/errors.md`` says what to do about each."""

    __str__ = str.__str__  # print the value, as JSON does

    EOS = "eos"  # the model ended its answer
    ANSWER = "answer"  # a graph reached its answer node
    MAX_NEW_TOKENS = "max_new_tokens"  # the token budget ran out (generated and forced tokens)
    CONTEXT_FULL = "context_full"  # the next tokens would pass the model's max_position_embeddings
    MALFORMED = "malformed"  # a malformed span, with on_malformed: stop
    ACTION_FAILED = "action_failed"  # a plugin raised, or returned the wrong observation
    ACTION_TIMEOUT = "action_timeout"  # a plugin call passed its timeout (runtime.action_timeout_s)
    OBSERVATION_INVALID = "observation_invalid"  # an observation the model cannot be shown
    GRAPH_ERROR = "graph_error"  # the graph could not route the sample
    STOPPED = "stopped"  # a controller stopped the sample
    TOOL_CALLS = "tool_calls"  # client-side tools: the call goes back to the caller, who runs it
    CANCELLED = "cancelled"  # the caller went away (a disconnected client, a server shutting down)
    DEADLINE = "deadline"  # the request's deadline passed before the sample finished
    ERROR = "error"  # the sample could not start (unreadable image, prompt too long, ...)


class EventType(str, Enum):
    """The ``type`` of a trace event (``Trace.events``): things that happened without ending the
    sample. ``docs/reference/errors.md`` says what each means."""

    __str__ = str.__str__

    PARSE_ERROR = "parse_error"  # a malformed perception span (``kind`` says how)
    BUDGET_EXHAUSTED = "budget_exhausted"  # a call past the hop budget went unanswered
    NO_PROJECTOR = "no_projector"  # a features call the model has no branch to show
    GRAPH_ERROR = "graph_error"  # the graph could not route a call
    GRAPH = "graph"  # a note from the graph executor
    PROMPT = "prompt"  # a trigger prompt left out: the model was trained without it
    NOT_SHOWN = "not_shown"  # a text observation kept in the trace, not shown: the model was not trained to read it
    TOKENIZER = "tokenizer"  # characters of a text the tokenizer maps to its unknown token (``characters``, ``where``)


@dataclass
class Hop:
    """One perception call the model made, and what it cost.

    ``box`` is in the original image's pixels; ``views`` are the frames of the views it produced
    (their ``parent`` is the view the call was made in: the provenance); ``text`` the summaries of
    the text observations it produced (``perceive.Text.summary()``). ``prefilled_tokens`` is
    how many tokens were fed to the model to show the observation; ``decoded_tokens`` how many the
    model generated since the previous hop (or the prompt)."""

    index: int
    action: str
    tokens: list[str]
    args: dict[str, Any]
    target: str
    box: dict[str, Any] | None = None
    views: list[dict[str, Any]] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)
    text: list[dict[str, Any]] = field(default_factory=list)  # text observations: words, boxes (root pixels)
    prefilled_tokens: int = 0
    decoded_tokens: int = 0
    dispatch_ms: float = 0.0
    prefill_ms: float = 0.0
    encoder_cache_hits: int = 0
    encoder_cache_misses: int = 0
    error: dict[str, Any] | None = None
    node: str | None = None  # the graph node that ran it (graph runs)
    cached: bool = False  # the observation was reused from an identical earlier call


@dataclass
class Trace:
    question: str = ""
    image_size: tuple[int, int] | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    hops: list[Hop] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # parse errors, budget, failures
    answer: str = ""
    text: str = ""  # everything the model generated, perception tokens included
    finish_reason: FinishReason | None = None
    error: dict[str, Any] | None = None
    total_ms: float = 0.0
    #: the remote endpoint (its /v1 base URL, one of ``remote.url``) the sample ran all its turns on;
    #: None for a local model
    endpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warnings(self) -> list[str]:
        """The messages of the ``tokenizer`` events (characters the tokenizer lost), each once, in
        order: what the CLI prints and ``perceive serve`` returns in ``perceive.warnings``."""
        return list(dict.fromkeys(e["message"] for e in self.events if e.get("type") == EventType.TOKENIZER))

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        d = dict(d)
        d["hops"] = [Hop(**h) for h in d.get("hops", [])]
        if d.get("finish_reason"):
            d["finish_reason"] = FinishReason(d["finish_reason"])
        else:
            d["finish_reason"] = None
        if d.get("image_size") is not None:
            d["image_size"] = tuple(d["image_size"])
        return cls(**d)
