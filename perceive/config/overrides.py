"""The command line's values over a config's files: ``--set KEY.PATH=VALUE`` (:func:`parse_sets`;
the value is read by the same safe YAML reader as files), then a command's own flags
(``--max-hops 2``), each an :class:`Override` laid over the composed files (:func:`apply_overrides`).
A flag beats ``--set``, which beats the file (see :mod:`perceive.config.files`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from perceive.config.files import merge, stamp
from perceive.config.origins import at
from perceive.config.safe_yaml import LinedDict, loads
from perceive.errors import ConfigError


@dataclass(frozen=True)
class Override:
    """A value set on the command line at ``path`` (``("runtime", "max_hops")``); ``origin``
    names it in errors (``--set runtime.max_hops``, ``--max-hops``)."""

    path: tuple[str | int, ...]
    value: Any
    origin: str


def parse_sets(items: Iterable[str] | None, fields: Iterable[str] | None = None) -> list[Override]:
    """``--set KEY.PATH=VALUE`` items as :class:`Override` s. ``KEY.PATH`` is dotted
    (``runtime.max_hops``, ``actions.zoom.options.size``; a number indexes a list:
    ``encoders.0.weights``); ``VALUE`` is YAML (``2``, ``null``, ``[a, b]``, ``{size: 336}``).

    ``fields``: the config's top-level fields, for commands that run a graph: there a bare KEY
    that is not one of them is a graph param (``max_hops=2`` is ``params.max_hops=2``).
    A malformed item raises ``ValueError`` (a usage error); a bad value ``ConfigError``."""
    fields = None if fields is None else set(fields)
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or not all(p.strip() for p in parts):
            raise ValueError(f"--set takes KEY=VALUE, e.g. runtime.max_hops=2, got {item!r}")
        path = tuple(int(p) if p.isdigit() else p.strip() for p in parts)
        if fields is not None and len(path) == 1 and key not in fields:
            path = ("params", key)
        origin = f"--set {key}"
        out.append(Override(path, loads(value, origin), origin))
    return out


def apply_overrides(data: LinedDict, overrides: Iterable[Override]) -> LinedDict:
    """Set each override's value in ``data`` (in place; ``data`` is returned). A mapping value
    merges into a mapping already there, like a file over its base; missing mappings on the way
    are made."""
    for o in overrides:
        node: Any = data
        for depth, key in enumerate(o.path):
            path = o.path[:depth]
            if isinstance(node, list):
                if not isinstance(key, int) or not 0 <= key < len(node):
                    raise ConfigError(f"{o.origin}: {_dotted(path)} is a list of {len(node)} item(s): {key!r} "
                                      "is not one of its indices", hint="count from 0, e.g. encoders.0.weights")
            elif isinstance(node, dict):
                key = str(key)
            else:
                raise ConfigError(f"{o.origin}: {_dotted(path)} is {node!r}{at(data, path)}, not a mapping: it has "
                                  f"no field {key!r}", hint="set the whole value instead, or fix the key path")
            if depth == len(o.path) - 1:
                value = stamp(o.value, o.origin, keep_lines=False)
                have = node[key] if isinstance(node, list) or key in node else None
                node[key] = merge(have, value) if have is not None else value
            elif isinstance(node, list) or isinstance(node.get(key), (dict, list)):
                node = node[key]
                continue
            elif node.get(key) is None:
                if isinstance(o.path[depth + 1], int):
                    raise ConfigError(f"{o.origin}: {_dotted(o.path[:depth + 1])} has no item {o.path[depth + 1]}",
                                      hint=f"set the whole list: --set '{_dotted(o.path[:depth + 1])}=[...]'")
                node[key] = LinedDict()
            else:
                node = node[key]  # a scalar: refused with its line on the next key
                continue
            if isinstance(node, dict):
                getattr(node, "lines", {}).pop(key, None)
                getattr(node, "origins", {})[key] = o.origin
            node = node[key]
    return data


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path)) or "(top level)"


__all__ = ["Override", "apply_overrides", "parse_sets"]
