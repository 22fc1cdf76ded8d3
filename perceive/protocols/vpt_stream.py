"""The VPT stream parser: the paper's perception-token spans, read from generated ids one at a time.

Feed it token ids as the model generates them. When a span closes it returns a
:class:`~perceive.protocols.calls.PerceptionCall` (typed arguments, raw tokens). Anything
malformed comes back as a :class:`~perceive.protocols.calls.ParseError` *value* (its kinds are
listed in :mod:`perceive.protocols.calls`); no exception escapes :meth:`StreamParser.feed` or
:meth:`StreamParser.close`. The ``vpt`` protocol (:mod:`perceive.protocols.vpt`) reads with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from perceive.actions import Action, SpanError
from perceive.protocols.calls import Event, ParseError, ParseErrorKind, PerceptionCall
from perceive.protocols.codec import DictCodec, TokenCodec

_PIECE = re.compile(r"<\|[^|<>]*\|>|[^<]+|<")

def split_text(text: str) -> list[str]:
    """Split decoded ordinary text into ``<|...|>``-looking pieces and the text between."""
    return [p for p in _PIECE.findall(text) if p]

@dataclass
class _Open:
    action: Action
    start: int
    tokens: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    pending_text: list[int] = field(default_factory=list)
    failed: bool = False  # an error was already reported; swallow tokens until the span ends

class StreamParser:
    """Incremental parser over generated token ids.

    ``actions`` are the actions whose spans to recognise (each action's ``grammar.start`` must
    be unique among them). ``codec`` maps ids to strings.
    """

    def __init__(self, actions: Iterable[Action], codec: TokenCodec):
        self.codec = codec
        self._by_start: dict[str, Action] = {}
        self._owners: dict[str, set[str]] = {}
        for a in actions:
            if a.grammar is None:
                continue
            if a.grammar.start in self._by_start:
                raise ValueError(
                    f"actions {self._by_start[a.grammar.start].name!r} and {a.name!r} share "
                    f"the start token {a.grammar.start}"
                )
            self._by_start[a.grammar.start] = a
            for tok in a.grammar.tokens:
                self._owners.setdefault(tok, set()).add(a.name)
        self._open: _Open | None = None
        self._pos = -1

    @property
    def in_span(self) -> bool:
        return self._open is not None

    @property
    def open_action(self) -> str | None:
        return self._open.action.name if self._open else None

    def feed(self, token_id: int) -> Event | None:
        """Consume one id. Returns a call or an error when one completes, else ``None``."""
        self._pos += 1
        try:
            return self._feed(int(token_id), self.codec.token(token_id))
        except Exception as exc:  # a codec or plugin bug must not kill generation
            self._open = None
            return ParseError(ParseErrorKind.INVALID_ARGS, f"parser failure: {exc!r}",
                              position=self._pos)

    def feed_many(self, token_ids: Iterable[int]) -> list[Event]:
        return [e for e in (self.feed(t) for t in token_ids) if e is not None]

    def close(self) -> ParseError | None:
        """End of generation: an open span is reported as ``unclosed``."""
        if self._open is None:
            return None
        o, self._open = self._open, None
        if o.failed:
            return None
        return ParseError(ParseErrorKind.UNCLOSED,
                          f"generation ended inside a {o.action.name} span",
                          o.action.name, tuple(o.tokens), self._pos)

    def reset(self) -> None:
        self._open = None
        self._pos = -1

    # -- internals ---------------------------------------------------------------------

    def _feed(self, tid: int, tok: str) -> Event | None:
        o = self._open
        if tok in self._by_start:
            if o is not None and not o.failed:
                err = ParseError(ParseErrorKind.NESTED_START,
                                 f"{tok} opened inside an unclosed {o.action.name} span",
                                 o.action.name, tuple(o.tokens + [tok]), self._pos)
            else:
                err = None
            self._open = _Open(self._by_start[tok], self._pos, [tok], [tid])
            return err
        if o is None:
            owners = self._owners.get(tok)
            if owners and any(self._is_end(tok, name) for name in owners):
                return ParseError(ParseErrorKind.STRAY_END, f"{tok} with no open span",
                                  sorted(owners)[0], (tok,), self._pos)
            return None
        o.tokens.append(tok)
        o.ids.append(tid)
        grammar = o.action.grammar
        if tok == grammar.end:
            self._flush_text(o)
            self._open = None
            return None if o.failed else self._finish(o)
        if o.failed:
            return None
        if tok in grammar.inner:
            self._flush_text(o)
            o.pieces.append(tok)
            return None
        owners = self._owners.get(tok)
        if owners:  # a grammar token of some other action
            o.failed = True
            return ParseError(ParseErrorKind.MIXED_FAMILIES,
                              f"{tok} (of {', '.join(sorted(owners))}) inside a "
                              f"{o.action.name} span", o.action.name, tuple(o.tokens), self._pos)
        o.pending_text.append(tid)
        return None

    def _is_end(self, tok: str, action_name: str) -> bool:
        return any(a.name == action_name and a.grammar.end == tok for a in self._by_start.values())

    def _flush_text(self, o: _Open) -> None:
        if o.pending_text:
            o.pieces.extend(split_text(self.codec.text(o.pending_text)))
            o.pending_text = []

    def _finish(self, o: _Open) -> Event:
        try:
            args = o.action.parse(list(o.pieces))
        except SpanError as exc:
            kind = _kind(exc.kind)
            return ParseError(kind, str(exc), o.action.name, tuple(o.tokens), self._pos)
        except Exception as exc:  # includes pydantic ValidationError
            return ParseError(ParseErrorKind.INVALID_ARGS, str(exc), o.action.name,
                              tuple(o.tokens), self._pos)
        return PerceptionCall(o.action.name, args, tuple(o.tokens), tuple(o.ids), o.start,
                              self._pos)

def _kind(value: str) -> ParseErrorKind:
    try:
        return ParseErrorKind(value)
    except ValueError:
        return ParseErrorKind.INVALID_ARGS

def parse_tokens(actions: Iterable[Action], tokens: Iterable[str]) -> list[Event]:
    """Parse a sequence of token *strings* (each one token). Convenience for tests and data."""
    tokens = list(tokens)
    table = {i: t for i, t in enumerate(dict.fromkeys(tokens))}
    ids = {t: i for i, t in table.items()}
    parser = StreamParser(actions, DictCodec(table))
    events = parser.feed_many(ids[t] for t in tokens)
    tail = parser.close()
    return events + ([tail] if tail else [])


__all__ = ["StreamParser", "parse_tokens", "split_text"]
