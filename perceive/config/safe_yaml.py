"""The one YAML reader of perceive: safe tags only, and limits on what a file may cost.

Every YAML perceive reads (run, train and eval configs, graphs, ``--set`` values) goes through
:func:`load_yaml` or :func:`loads`. Besides PyYAML's safe tags, they refuse, with a
:class:`~perceive.errors.ConfigError` naming the file, the line and the limit:

* a file over :data:`MAX_BYTES`;
* collections nested deeper than :data:`MAX_DEPTH` (PyYAML composes recursively, so 100k ``[``
  would end in a ``RecursionError``);
* more than :data:`MAX_ALIASES` aliases, an alias inside its own anchor, and documents that
  hold more than :data:`MAX_VALUES` values once aliases are expanded (a "billion laughs" file
  is a few hundred bytes that code walking it would expand to billions of values);
* duplicate keys in one mapping (PyYAML would silently keep the last one), and keys that differ
  in YAML but not as Python dict keys (``1`` and ``true``);
* malformed YAML, with its line and column.

Mappings come back as :class:`LinedDict`, which remembers the line of each key, so that
validation errors can point at the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from perceive.errors import ConfigError

#: the largest YAML file perceive reads; configs and graphs are a few kB
MAX_BYTES = 1024 * 1024
#: the deepest nesting of collections (configs and graphs need fewer than 10 levels)
MAX_DEPTH = 64
#: the most aliases (``*name``, merge keys included) in one file
MAX_ALIASES = 256
#: the most values (scalars and collections) in one file, aliases expanded
MAX_VALUES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class LinedDict(dict):
    """A YAML mapping that knows the (1-based) line of each of its keys: ``.lines[key]``; and,
    for configs composed from several files (:mod:`perceive.config.files`), where each key was
    set: ``.origins[key]``, a file path or a command-line option (``--set KEY``)."""

    def __init__(self, data=(), lines: dict | None = None, origins: dict | None = None):
        super().__init__(data)
        self.lines = dict(lines or {})
        self.origins = dict(origins or {})


class _Limit(Exception):
    """A limit was hit; carries the user-facing message, the line and the hint."""

    def __init__(self, message: str, hint: str, mark=None):
        super().__init__(message)
        self.message, self.hint, self.mark = message, hint, mark


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts depth and aliases while composing, and records key lines."""

    def __init__(self, stream, max_depth: int, max_aliases: int):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._max_depth = max_depth
        self._max_aliases = max_aliases

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > self._max_aliases:
                raise _Limit(f"more than {self._max_aliases} YAML aliases (*name)",
                             "write the repeated values out, or use fewer anchors and aliases",
                             self.peek_event().start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > self._max_depth:
                raise _Limit(f"YAML nested more than {self._max_depth} levels deep",
                             "perceive files need only a few levels: look for unclosed or repeated "
                             "brackets, or flatten the structure", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        # int('1' * 5000), a date like 2024-13-45 ... raise ValueError without a line
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise ConstructorError(None, None, f"cannot read this value: {exc}", node.start_mark) from None


def _construct_mapping(loader: _Loader, node: MappingNode, deep: bool = False) -> LinedDict:
    # a duplicate is the same YAML value: same resolved tag, equal value (`1` and `0x1`). `1` and
    # `true` (or `1.0`) are different keys that Python's dict would still fold into one, so they
    # are refused too, as what they are
    seen: dict[tuple[str, Any], Node] = {}
    by_value: dict[Any, Node] = {}
    for key_node, _ in node.value:  # before merge keys are flattened in: `<<` then a key overrides
        if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
            key = loader.construct_object(key_node)
            first = seen.get((key_node.tag, key))
            if first is not None:
                raise ConstructorError("while reading a mapping", node.start_mark,
                                       f"found duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                                       key_node.start_mark)
            other = by_value.get(key)
            if other is not None:
                raise ConstructorError("while reading a mapping", node.start_mark,
                                       f"key {key_node.value!r} reads as the same key as {other.value!r} (line "
                                       f"{other.start_mark.line + 1}): {key!r} == {loader.construct_object(other)!r} "
                                       "in Python; quote the keys to keep both as text",
                                       key_node.start_mark)
            seen[(key_node.tag, key)] = by_value[key] = key_node
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    lines = {}
    for key_node, _ in node.value:
        if isinstance(key_node, ScalarNode):
            # merged keys come first, the mapping's own after: its own line wins
            lines[loader.construct_object(key_node)] = key_node.start_mark.line + 1
    return LinedDict(mapping, lines)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _check_expansion(root: Node, max_values: int, max_depth: int) -> None:
    """Refuse documents whose aliases expand too far, or into themselves.

    Sizes and heights are computed once per node (memoised), so a billion-laughs file costs
    time linear in its text; walking it expanded is what would hang."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:  # iterative post-order: alias chains may be longer than Python's stack
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            kids = _children(node)
            size[key] = min(1 + sum(size[id(k)] for k in kids), max_values + 1)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            continue
        if key in size:
            continue
        if key in active:
            raise _Limit("a YAML alias refers to the collection that contains it",
                         "an alias (*name) must point at an anchor (&name) outside itself", node.start_mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)
    if size[id(root)] > max_values:
        raise _Limit(f"the YAML holds more than {max_values} values once its aliases (*name) are "
                     "expanded", "write the values out, or use fewer aliases; nested aliases multiply "
                     "(a 'billion laughs' file)")
    if height[id(root)] > max_depth:
        raise _Limit(f"YAML aliases nest values more than {max_depth} levels deep",
                     "use fewer nested aliases, or flatten the structure")


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def loads(text: str | bytes, source: str = "<string>", *, max_bytes: int = MAX_BYTES,
          max_depth: int = MAX_DEPTH, max_aliases: int = MAX_ALIASES, max_values: int = MAX_VALUES) -> Any:
    """Parse one YAML document with perceive's limits. ``source`` names it in errors (a path,
    or ``--set KEY``). Raises :class:`~perceive.errors.ConfigError`; never ``RecursionError``."""
    if len(text) > max_bytes:
        raise _error(source, None, f"{len(text)} bytes, over the {max_bytes}-byte limit for YAML perceive reads",
                     _SIZE_HINT)
    loader = None
    try:
        loader = _Loader(text, max_depth, max_aliases)  # reads the encoding: may raise ReaderError
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, max_values, max_depth)
        return loader.construct_document(node)
    except _Limit as exc:
        raise _error(source, exc.mark, exc.message, exc.hint) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = exc.context or ""
        if context and exc.context_mark is not None and (mark is None or exc.context_mark.line != mark.line):
            context += f" (line {exc.context_mark.line + 1})"
        what = "; ".join(s for s in (context, exc.problem) if s)
        line = f"line {mark.line + 1}" if mark is not None else "the file"
        hint = (f"fix the value at {line}" if isinstance(exc, ConstructorError)
                else f"fix the YAML syntax at {line} (quotes, brackets, colons, indentation)")
        raise _error(source, mark, f"not valid YAML: {what}", hint) from None
    except yaml.YAMLError as exc:  # ReaderError: bytes that are not text
        why = " ".join(str(exc).split())
        raise _error(source, None, f"not valid YAML: {why}",
                     "save the file as UTF-8 text without control characters") from None
    except RecursionError:  # the depth limit should prevent this; never let it escape
        raise _error(source, None, "YAML nested too deeply to read",
                     f"keep nesting under {max_depth} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | Path, *, max_bytes: int = MAX_BYTES, **limits: int) -> Any:
    """Read and parse one YAML file with perceive's limits (see :func:`loads`)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)  # never read more than the limit (a device, a huge file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}",
                          hint="check the path: it must be a readable YAML file") from None
    if len(data) > max_bytes:
        raise _error(str(path), None, f"larger than the {max_bytes}-byte limit for YAML perceive reads",
                     _SIZE_HINT)
    return loads(data, str(path), max_bytes=max_bytes, **limits)


_SIZE_HINT = ("perceive configs and graphs are a few kB: check this is the file you meant "
              "(data belongs in JSONL files, not YAML)")


def _error(source: str, mark, detail: str, hint: str) -> ConfigError:
    """``source:line:col: detail``; also as attributes (``source``, ``line``, ``detail``), for
    callers that report problems their own way (graph validation)."""
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    err = ConfigError(f"{where}: {detail}", hint=hint)
    err.source, err.line, err.detail = source, (mark.line + 1 if mark is not None else None), detail
    return err


__all__ = ["MAX_ALIASES", "MAX_BYTES", "MAX_DEPTH", "MAX_VALUES", "LinedDict", "load_yaml", "loads"]
