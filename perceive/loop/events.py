"""What the loop emits: one typed event stream per sample.

The session steps samples and emits events; every consumer (``ask``, ``graph run``, eval,
``perceive serve``, client-side tools, the remote engine, RL rollouts) reads events, never a
sample's state. The stream of one sample, in order::

    TokenDelta(PROMPT)  [Notice | HopStarted | HopFinished | TokenDelta(...)]*  [ToolCallsPending]  Finished

``TokenDelta`` events together hold every token fed to the model, in feeding order, each with its
:class:`Provenance`; the ids of the ``GENERATED`` and ``FORCED`` ones, in order, are the
sample's ``Answer.token_ids``. ``Finished`` is always last and always present (a sample that
could not start still finishes, with its error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from perceive.trace import EventType, FinishReason, Trace


class Provenance(str, Enum):
    """Where a token fed to the model came from."""

    __str__ = str.__str__

    PROMPT = "prompt"  # the first turn: system, image(s), question, replayed earlier turns
    GENERATED = "generated"  # sampled from the model; its log-probability is known
    FORCED = "forced"  # written for the model: a re-encode span's action/end tokens, a policy's choice
    OBSERVATION = "observation"  # an observation turn after a call (image, feature or text tokens)


@dataclass(frozen=True)
class TokenDelta:
    """Tokens appended to the sample's sequence, all of one ``provenance``.

    ``logprobs``: for ``GENERATED`` tokens, the natural-log probability of each id under the
    distribution it was sampled from (float; greedy: ``log_softmax(logits)``; sampled: after the
    temperature, top-k and top-p warpers); None for other provenances. ``text``: the new visible
    text of the current assistant turn (perception tokens, call markup and the end-of-turn token
    left out; a suffix that may begin a call's opening tag is held back until it cannot); always
    empty for a sample started without ``stream_text`` (``run``, ``ask``: no decoding per token).
    ``images`` and ``features`` (below) hold references to tensors the loop made anyway: an RL
    rollout's teacher-forced forward reads them (:mod:`perceive.rl.trajectory`)."""

    sample: int
    ids: tuple[int, ...]
    provenance: Provenance
    logprobs: tuple[float, ...] | None = None
    text: str = ""
    #: ``(pixel_values, grid_thw)`` of the images whose image-pad runs are among ``ids``, in order
    #: (``PROMPT`` and ``OBSERVATION``): float pixel rows as the vision tower takes them, grid
    #: ``(3,)`` or ``(k, 3)`` long. What a training forward needs to see exactly what the loop fed.
    images: tuple[tuple[Any, Any], ...] = ()
    #: ``(branch, raw features)`` of a re-encode observation among ``ids``: the encoder's output
    #: (``Features.tensor``, before the branch's projector) whose projected rows fill the branch's
    #: placeholder tokens. A training forward projects them again, conditioned on its own control
    #: state (:meth:`perceive.model.vpt.VPTModel.forward`'s ``features``).
    features: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class HopStarted:
    """A perception call is about to run. ``args``: its JSON arguments; ``target``: the view id it
    runs on (``root`` is the original image)."""

    sample: int
    index: int
    action: str
    args: dict[str, Any]
    target: str
    node: str | None = None


@dataclass(frozen=True)
class HopFinished:
    """A perception call ran (or failed): ``hop`` is its trace record as JSON
    (:class:`perceive.trace.Hop`: boxes and view frames in root pixels, timings in ms, ``error``)."""

    sample: int
    hop: dict[str, Any]


@dataclass(frozen=True)
class PendingCall:
    """A call going back to the client, which runs it (client-side tools). ``name``/``arguments``:
    the tool call as the protocol declares it; ``boxes``: the root-pixel boxes its views will show
    (None for a call without views, or one that fails here)."""

    name: str
    arguments: dict[str, Any]
    action: str
    args: dict[str, Any]
    target: str | None
    options: dict[str, Any]
    boxes: list[dict] | None


@dataclass(frozen=True)
class ToolCallsPending:
    """The sample stopped at calls its client runs; ``text`` is the turn's visible text before
    the first call, ``raw`` the same as the model wrote it (special tokens kept)."""

    sample: int
    calls: tuple[PendingCall, ...]
    text: str
    raw: str = ""


@dataclass(frozen=True)
class Notice:
    """A trace event (:class:`perceive.trace.EventType`): something happened without ending the
    sample (a malformed span, a budget, an unencodable character, a graph note)."""

    sample: int
    type: EventType
    fields: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.fields}


@dataclass(frozen=True)
class Finished:
    """The sample ended. ``answer``: its text (no perception tokens, no unanswered call); ``raw``:
    the last assistant turn as the model wrote it (special tokens kept, end-of-turn dropped);
    ``token_ids``: every generated and forced id; ``logits``: each generated step's ``(V,)`` float32
    logits when the run records them."""

    sample: int
    answer: str
    finish_reason: FinishReason
    trace: Trace
    raw: str = ""
    token_ids: tuple[int, ...] = ()
    logits: list | None = None

    @property
    def error(self) -> dict | None:
        return self.trace.error


Event = TokenDelta | HopStarted | HopFinished | ToolCallsPending | Notice | Finished

__all__ = ["Event", "Finished", "HopFinished", "HopStarted", "Notice", "PendingCall", "Provenance", "TokenDelta",
           "ToolCallsPending"]
