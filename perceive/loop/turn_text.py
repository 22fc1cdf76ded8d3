"""The visible text of an assistant turn, as it is generated: what a stream may show now.

Perception tokens and the end-of-turn token are never text; a call's opening tag (a text
protocol's ``<tool_call>``) and everything after it is call markup, so a suffix that may be the
tag's beginning is held back until the next token settles it. Decoding is incremental (a short
window of ids, never the whole turn again).
"""

from __future__ import annotations

from collections.abc import Callable

from perceive.protocols.base import IncrementalDetokenizer


class TurnText:
    """One assistant turn's text. ``push`` takes each generated id and returns the new text that
    is safe to show; ``rest(answer)`` what is left to show once the answer is known."""

    def __init__(self, decode: Callable[[list[int]], str], skip: frozenset[int], open_tag: str = ""):
        self._detok = IncrementalDetokenizer(decode)
        self._skip = skip
        self._tag = open_tag
        self._text = ""
        self.shown = 0  # characters of the (left-stripped) text already returned

    def push(self, token_id: int) -> str:
        if token_id in self._skip:
            return ""
        self._text += self._detok.push(token_id)
        text = self._text.lstrip()
        safe = len(text)
        if self._tag:
            at = text.find(self._tag)
            if at != -1:
                safe = at
            else:  # hold back a suffix that may be the tag's beginning
                safe = next((len(text) - k for k in range(min(len(self._tag) - 1, len(text)), 0, -1)
                             if self._tag.startswith(text[-k:])), safe)
        if safe <= self.shown:
            return ""
        new, self.shown = text[self.shown:safe], safe
        return new

    def rest(self, answer: str) -> str:
        """The end of ``answer`` not shown yet (what was held back, stripped as the answer is)."""
        sent = self._text.lstrip()[:self.shown]
        if answer.startswith(sent):
            return answer[len(sent):]
        if answer.startswith(sent.rstrip()):
            return answer[len(sent.rstrip()):].lstrip()
        return ""  # a tokenizer whose pieces do not add up: nothing more is sent
