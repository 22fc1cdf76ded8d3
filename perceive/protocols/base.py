"""The tool-call protocol contract: how one model family calls perception actions.

A :class:`ToolProtocol` knows four things about its family:

* how the available actions are declared to the model (:meth:`ToolProtocol.system_prompt`);
* how the model's stream is read into calls and parse errors, token by token
  (:meth:`ToolProtocol.reader`; text protocols decode incrementally, see
  :class:`IncrementalDetokenizer`);
* how a tool name and its arguments map onto a registered action, with the coordinate frame
  explicit (:meth:`TextToolProtocol.resolve`: a box in the named view's pixels, exact through
  :class:`~perceive.geometry.Frame`);
* how the observation turn after a call is written (:meth:`ToolProtocol.observation_text`).

Malformed calls are :class:`~perceive.protocols.calls.ParseError` values; nothing a model writes raises.
Protocols arrive through the ``perceive_register_protocols`` hook; ``vpt``, ``hermes_json`` and
``mini_o3_grounding`` are built in.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from perceive.actions import Action
from perceive.geometry import Frame
from perceive.protocols.boxes import BoxProblem, Resolved, _exact, _num, crop_call, read_box, view_at  # noqa: F401 - public here too
from perceive.protocols.calls import Event, ParseError, ParseErrorKind, PerceptionCall
from perceive.protocols.codec import TokenCodec
from perceive.strict import FrozenStrictModel

_NAME = re.compile(r"[a-z][a-z0-9_]*")

#: the frames a call may name, in the order the model saw them: ``[root, first view, ...]``
Views = Callable[[], Sequence[Frame]]


class NoProtocolOptions(FrozenStrictModel):
    """``Options`` of a protocol that takes none: any option given is an error."""


class ToolProtocol:
    """Base class of a tool-call protocol. Subclass it, set ``name``, ``description`` and
    ``Options`` (a pydantic model, ``extra="forbid"``), and implement :meth:`reader`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoProtocolOptions

    def __init__(self, **options: Any):
        self.options = self.Options.model_validate(options)

    def configure(self, options: Mapping[str, Any] | None) -> ToolProtocol:
        """A copy of this protocol with ``options`` (validated: a wrong one raises
        ``pydantic.ValidationError``)."""
        return type(self)(**{**self.options.model_dump(exclude_unset=True), **(options or {})})

    # -- declaring the actions ----------------------------------------------------------------

    def system_prompt(self, system: str | None, actions: Sequence[Action]) -> str | None:
        """The system turn's text with the actions declared in this family's format (``None``:
        the chat template's default system turn)."""
        return system

    # -- reading the stream -------------------------------------------------------------------

    def reader(self, actions: Sequence[Action], codec: TokenCodec, views: Views | None = None):
        """A fresh per-sample stream reader: ``feed(token_id) -> Event | None``, ``feed_many``,
        ``close() -> ParseError | None``. ``views()`` gives the frames a call may name."""
        raise NotImplementedError

    # -- the observation turn -----------------------------------------------------------------

    def observation_text(self, layout, blocks: Sequence[str], index: int) -> str | None:
        """The text of the turn appended after a call: the end of the assistant turn, a user turn
        holding ``blocks`` (each a view's expanded image markup), the next assistant header.
        ``index`` is the 1-based number of the first view shown (``observation_N``). ``None``:
        the paper's image turn (``ChatLayout.observation_turn``)."""
        return None

    def observation_turn(self, layout, blocks: Sequence[str], index: int) -> list[int]:
        """:meth:`observation_text` as token ids (the delta appended on the KV cache)."""
        text = self.observation_text(layout, blocks, index)
        return layout.observation_turn(list(blocks)) if text is None else layout.encode(text)

    # -- calls as chat messages (perceive serve, remote endpoints) ------------------------------

    def tool_names(self, actions: Sequence[Action]) -> list[str]:
        """The tool names a model of this family calls (an OpenAI ``tools`` list names these)."""
        return [a.name for a in actions]

    def calls_in_text(self, text: str, views: Sequence[Frame], actions: Sequence[Action]) -> list[Event]:
        """Every call (:class:`~perceive.protocols.calls.PerceptionCall`) and parse error in a finished turn's
        ``text``, written as the model writes it (perception tokens as their literals)."""
        raise NotImplementedError(f"protocol {self.name!r} cannot read calls out of text")

    def call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        """A structured tool call (an endpoint's ``tool_calls`` entry) written as the model writes it."""
        raise NotImplementedError(f"protocol {self.name!r} cannot write structured tool calls as text; ask the "
                                  "endpoint for the raw text (no tool parser)")

    def stop_strings(self, actions: Sequence[Action]) -> list[str]:
        """Where an endpoint should stop generating: the end of a call (it comes back without it,
        and :meth:`close_call` puts it back)."""
        return sorted({a.grammar.end for a in actions if a.grammar is not None and getattr(a.grammar, "end", None)})

    def close_call(self, text: str, actions: Sequence[Action]) -> str:
        """``text`` with the closing tag of a call it leaves open put back (an endpoint stopped on it)."""
        for start, end in self._tags(actions):
            if start in text and text.rfind(start) > text.rfind(end):
                return text + end
        return text

    def _tags(self, actions: Sequence[Action]) -> list[tuple[str, str]]:
        return [(a.grammar.start, a.grammar.end) for a in actions if a.grammar is not None]

    def call_name_and_arguments(self, call: PerceptionCall) -> tuple[str, dict[str, Any]]:
        """``(tool name, arguments)`` of a call, as an OpenAI ``tool_calls`` entry names them."""
        return call.action, call.args.model_dump(mode="json")

    def observation_framing(self) -> tuple[str, str]:
        """The text this family writes before and after a single observation inside its user turn
        (``("<tool_response>", "</tool_response>")`` for DeepEyes); ``("", "")`` for the paper's turn."""
        text = self.observation_text(_BARE, ["\0"], 1)
        if text is None:
            return "", ""
        before, after = text.split("\0", 1)
        return before, after

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


@dataclass(frozen=True)
class _BareLayout:
    """A layout with no turn markup: an observation turn's own text only."""

    turn_open: str = ""
    turn_close: str = ""


_BARE = _BareLayout()


def protocol_problems(protocol: Any) -> list[str]:
    """Everything wrong with a protocol's declaration (empty when well formed)."""
    if not isinstance(protocol, ToolProtocol):
        return [f"{protocol!r} is not a perceive.protocols.ToolProtocol instance"]
    problems = []
    if not isinstance(protocol.name, str) or not _NAME.fullmatch(protocol.name or ""):
        problems.append(f"name {protocol.name!r} must match [a-z][a-z0-9_]*")
    if not (isinstance(protocol.Options, type) and issubclass(protocol.Options, BaseModel)):
        problems.append("Options must be a pydantic BaseModel subclass")
    if type(protocol).reader is ToolProtocol.reader:
        problems.append("reader(actions, codec, views) is not implemented")
    return problems


# -- incremental detokenisation -----------------------------------------------------------------


class IncrementalDetokenizer:
    """Text from ids one at a time, decoding only a short window (a running offset, never the
    whole text again): the text between the last two emitted offsets is decoded with and without
    the new ids, and the difference is the new text. A trailing U+FFFD (half a multi-byte
    character) is held back until the next id completes it."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # start of the window decoded for context
        self.read = 0  # ids before this have been emitted

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self.decode(self.ids[self.prefix:self.read])
        now = self.decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is held back (at the end of generation)."""
        if self.read == len(self.ids):
            return ""
        before = self.decode(self.ids[self.prefix:self.read])
        now = self.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):]


# -- resolved calls -----------------------------------------------------------------------------


# -- a reader for text protocols ---------------------------------------------------------------


class TextToolProtocol(ToolProtocol):
    """A protocol whose calls are text between an open and a close tag (``<tool_call>`` ...
    ``</tool_call>``). Subclasses implement :meth:`parse_body` and :meth:`resolve`."""

    open_tag: ClassVar[str] = ""
    close_tag: ClassVar[str] = ""

    def parse_body(self, body: str) -> tuple[str, Mapping[str, Any]]:
        """``(tool name, arguments)`` from the text between the tags; raise :class:`BoxProblem`
        (with a parse error kind) for one it cannot read."""
        raise NotImplementedError

    def resolve(self, tool: str, arguments: Mapping[str, Any], views: Sequence[Frame],
                actions: Mapping[str, Action]) -> Resolved:
        """The call mapped onto an action; raise :class:`BoxProblem` when it cannot be."""
        raise NotImplementedError

    def reader(self, actions: Sequence[Action], codec: TokenCodec, views: Views | None = None) -> TextCallReader:
        return TextCallReader(self, actions, codec, views)

    def tool_names(self, actions: Sequence[Action]) -> list[str]:
        return [getattr(self, "tool", None) or self.name]

    def stop_strings(self, actions: Sequence[Action]) -> list[str]:
        return [self.close_tag]

    def _tags(self, actions: Sequence[Action]) -> list[tuple[str, str]]:
        return [(self.open_tag, self.close_tag)]

    def call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
        return f"{self.open_tag}\n{body}\n{self.close_tag}"

    def call_name_and_arguments(self, call: PerceptionCall) -> tuple[str, dict[str, Any]]:
        snippet = call.tokens[0] if call.tokens else ""
        try:
            name, arguments = self.parse_body(snippet[len(self.open_tag):len(snippet) - len(self.close_tag)])
            return name, dict(arguments)
        except BoxProblem:
            return super().call_name_and_arguments(call)

    def calls_in_text(self, text: str, views: Sequence[Frame], actions: Sequence[Action]) -> list[Event]:
        table = dict(enumerate(text))
        reader = TextCallReader(self, actions, _CharCodec(table), lambda: views)
        events = reader.feed_many(range(len(text)))
        tail = reader.close()
        return events + ([tail] if tail else [])

    def read_text(self, text: str, views: Sequence[Frame], actions: Sequence[Action]) -> list[Resolved | ParseError]:
        """Every call in a finished ``text`` (the CLI's and the tests' entry point)."""
        table = dict(enumerate(text))
        reader = TextCallReader(self, actions, _CharCodec(table), lambda: views, keep_resolved=True)
        reader.feed_many(range(len(text)))
        reader.close()
        return reader.resolved


@dataclass
class _CharCodec:
    table: Mapping[int, str]

    def token(self, token_id: int) -> str:
        return self.table.get(int(token_id), "")

    def text(self, token_ids: list[int]) -> str:
        return "".join(self.table.get(int(i), "") for i in token_ids)


@dataclass
class TextCallReader:
    """Reads calls out of decoded text as ids arrive. Text is decoded incrementally; only the
    new text is scanned (plus a tag's length of the old, for a tag split across ids)."""

    protocol: TextToolProtocol
    actions: Sequence[Action]
    codec: TokenCodec
    views: Views | None = None
    keep_resolved: bool = False
    resolved: list = field(default_factory=list)

    def __post_init__(self):
        self._by_name = {a.name: a for a in self.actions}
        self.reset()

    def reset(self) -> None:
        self.detok = IncrementalDetokenizer(self.codec.text)
        self.text = ""
        self.starts: list[int] = []  # char offset where each id's text begins
        self.ids: list[int] = []
        self.scan = 0
        self.open_at: int | None = None
        self._pos = -1

    @property
    def in_span(self) -> bool:
        return self.open_at is not None

    @property
    def open_action(self) -> str | None:
        return None

    def feed(self, token_id: int) -> Event | None:
        """Consume one id: a call or an error when one completes, else ``None`` (a call first
        when one id completes several; :meth:`feed_events` gives them all)."""
        events = self.feed_events(token_id)
        calls = [e for e in events if isinstance(e, PerceptionCall)]
        return calls[0] if calls else (events[0] if events else None)

    def feed_events(self, token_id: int) -> list[Event]:
        self._pos += 1
        try:
            self.ids.append(int(token_id))
            self.starts.append(len(self.text))
            self.text += self.detok.push(token_id)
            return self._scan()
        except Exception as exc:  # a codec or plugin bug must not kill generation
            self.open_at = None
            self.scan = len(self.text)
            return [ParseError(ParseErrorKind.INVALID_ARGS, f"parser failure: {exc!r}", position=self._pos)]

    def feed_many(self, token_ids: Iterable[int]) -> list[Event]:
        return [e for t in token_ids for e in self.feed_events(t)]

    def close(self) -> ParseError | None:
        """End of generation: an open call is reported as ``unclosed``."""
        try:
            self.text += self.detok.flush()
            events = self._scan()
        except Exception:
            events = []
        err = next((e for e in events if isinstance(e, ParseError)), None)
        if self.open_at is not None:
            snippet = self.text[self.open_at:]
            self.open_at = None
            err = ParseError(ParseErrorKind.UNCLOSED, f"generation ended inside a {self.protocol.open_tag} call",
                             tokens=(snippet,), position=self._pos)
            self._record(err)
        return err

    # -- internals ---------------------------------------------------------------------------

    def _record(self, ev):
        if self.keep_resolved:
            self.resolved.append(ev)

    def _token_at(self, offset: int) -> int:
        return max(0, bisect.bisect_right(self.starts, offset) - 1)

    def _scan(self) -> list[Event]:
        op, cl = self.protocol.open_tag, self.protocol.close_tag
        keep = max(len(op), len(cl)) - 1
        out: list[Event] = []
        while True:
            i = self.text.find(op, self.scan)
            j = self.text.find(cl, self.scan)
            if self.open_at is None:
                if j != -1 and (i == -1 or j < i):
                    out.append(ParseError(ParseErrorKind.STRAY_END, f"{cl} with no open {op}", tokens=(cl,),
                                          position=self._pos))
                    self._record(out[-1])
                    self.scan = j + len(cl)
                    continue
                if i == -1:
                    self.scan = max(self.scan, len(self.text) - keep)
                    return out
                self.open_at, self.scan = i, i + len(op)
                continue
            if i != -1 and (j == -1 or i < j):
                out.append(ParseError(ParseErrorKind.NESTED_START, f"{op} inside an unclosed {op} call (it is "
                                      "dropped; the new one starts)", tokens=(self.text[self.open_at:i + len(op)],),
                                      position=self._pos))
                self._record(out[-1])
                self.open_at, self.scan = i, i + len(op)
                continue
            if j == -1:
                self.scan = max(self.scan, len(self.text) - keep, self.open_at + len(op))
                return out
            out.append(self._finish(self.open_at, j + len(cl)))
            self.open_at, self.scan = None, j + len(cl)

    def _finish(self, start: int, end: int) -> Event:
        op, cl = self.protocol.open_tag, self.protocol.close_tag
        snippet = self.text[start:end]
        first = self._token_at(start)
        tool = None
        try:
            tool, arguments = self.protocol.parse_body(snippet[len(op):len(snippet) - len(cl)])
            views = list(self.views()) if self.views is not None else []
            res = self.protocol.resolve(tool, arguments, views, self._by_name)
        except BoxProblem as exc:
            err = ParseError(exc.kind, str(exc), tool, (snippet,), self._pos)
            self._record(err)
            return err
        except Exception as exc:  # a plugin's Args or a protocol bug: a value, never a crash
            err = ParseError(ParseErrorKind.INVALID_ARGS, f"{type(exc).__name__}: {exc}", tool, (snippet,),
                             self._pos)
            self._record(err)
            return err
        self._record(res)
        return PerceptionCall(res.action, res.args, (snippet,), tuple(self.ids[first:]), first, self._pos,
                              target=res.target)
