"""Characters the model's tokenizer cannot encode.

A tokenizer with an unknown token (a word-level or WordPiece vocabulary, the shipped models'
char-level one) maps every character outside its vocabulary to that token, and the model reads
``<unk>`` where the user wrote ``🤔`` or ``中``. The loop does not refuse such a text (most of it
may still be readable); it records a ``tokenizer`` event naming the characters, which the CLI
prints as a warning and ``perceive serve`` returns in ``perceive.warnings``. A byte-level BPE
(Qwen's own tokenizers) has no unknown token: every character encodes, so nothing is checked.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import TYPE_CHECKING

from perceive.trace import EventType, Trace

if TYPE_CHECKING:
    from perceive.loop.sample import Sample

#: characters named in a warning; the event lists them all
SHOWN = 8


class TextRole(str, Enum):
    """Which text of a sample lost characters (the ``where`` of a ``tokenizer`` event)."""

    __str__ = str.__str__

    QUESTION = "question"  # the user's question
    SYSTEM = "system"  # the system turn (the run's, or the protocol's tool declarations)
    OBSERVATION = "observation"  # the text an action returned (OCR words, a client's tool result)


_ADVICE = {
    TextRole.QUESTION: "rephrase the question without them, or use a model whose tokenizer covers them",
    TextRole.SYSTEM: "write the system prompt without them, or use a model whose tokenizer covers them",
    TextRole.OBSERVATION: "the action's text is kept whole in the trace; a model whose tokenizer covers them "
                          "reads it all",
}


def unknown_id(tokenizer) -> int | None:
    """The id the tokenizer encodes an unknown character as; None when it has none (byte-level
    BPE: no character is lost)."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if model is not None and hasattr(model, "unk_token"):  # the fast backend's own unknown token
        name = model.unk_token
        return tokenizer.convert_tokens_to_ids(name) if name else None
    unk = getattr(tokenizer, "unk_token_id", None)
    return unk if isinstance(unk, int) else None


def unknown_characters(tokenizer, text: str, unk: int | None = None) -> list[str]:
    """The distinct characters of ``text`` that ``tokenizer`` encodes as its unknown token, in
    order of first appearance; ``unk``: :func:`unknown_id`, when already known. Each character is
    encoded on its own, so a WordPiece word that became one unknown token is narrowed down to the
    characters that lost it."""
    unk = unknown_id(tokenizer) if unk is None else unk
    if unk is None or not text:
        return []
    return [c for c in dict.fromkeys(text)
            if unk in tokenizer.encode(c, add_special_tokens=False, split_special_tokens=True)]


def describe(characters: Sequence[str]) -> str:
    """``'🤔' (U+1F914), '中' (U+4E2D)``: each character and its code point, the first
    :data:`SHOWN` of them."""
    def one(c: str) -> str:
        shown = c if c.isprintable() and not c.isspace() else unicodedata.name(c, "")
        return f"{shown!r} (U+{ord(c):04X})"

    more = f" (+{len(characters) - SHOWN} more)" if len(characters) > SHOWN else ""
    return ", ".join(one(c) for c in characters[:SHOWN]) + more


def message(characters: Sequence[str], where: TextRole) -> str:
    """The warning a ``tokenizer`` event carries: what was lost, where, and what to do."""
    where = TextRole(where)
    return (f"the model's tokenizer cannot encode {describe(characters)} in the {where.value}: the model reads "
            f"its unknown token instead and may answer wrongly; {_ADVICE[where]}")


def note_unencodable(s: Sample, tokenizer, ids: Sequence[int], texts: Iterable[tuple[TextRole, str]]) -> None:
    """Record a ``tokenizer`` event on ``s`` for each of ``texts`` that loses characters, when
    ``ids`` (the token ids those texts were encoded into, with whatever markup surrounds them)
    hold the unknown token at all: the common case costs one membership test."""
    unk = unknown_id(tokenizer)
    if unk is None or unk not in ids:
        return
    for where, text in texts:
        lost = unknown_characters(tokenizer, text or "", unk)
        if lost:
            s.event(EventType.TOKENIZER, characters=lost, where=TextRole(where), message=message(lost, where))


def warnings(events: Iterable[dict]) -> list[str]:
    """The messages of a trace's ``tokenizer`` events, each once, in order (what the CLI prints and
    ``perceive serve`` returns in ``perceive.warnings``)."""
    return Trace(events=list(events)).warnings()
