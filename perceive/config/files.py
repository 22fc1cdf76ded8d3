"""Config files made of layers: a file and the ``extends:`` chain of its bases, merged, each value
stamped with where it was written.

Every config perceive reads (run, train and eval) may start from another file::

    extends: base.yaml        # relative to this file; the base may extend another (a chain)

The file's values are laid over its base's: mappings merge key by key, any other value (a list,
a number, a string, ``null``) replaces the base's. A cycle (``a.yaml`` extends ``b.yaml`` extends
``a.yaml``) and chains longer than :data:`MAX_CHAIN` files are refused.

On top of the files come the command line's values (:mod:`perceive.config.overrides`: ``--set``,
then a command's own flags). So the precedence is **flag > --set > the file > its bases > the
schema's default**.

Every mapping remembers the line and the origin (a file, or ``--set KEY`` / ``--flag``) of each
key (:func:`stamp`), so that an error names where the wrong value was written and a relative path
is resolved against the folder of the file that wrote it (:mod:`perceive.config.origins`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perceive.config.safe_yaml import LinedDict, load_yaml
from perceive.errors import ConfigError

#: the key that names a config's base file
EXTENDS = "extends"
#: the most files in one ``extends`` chain
MAX_CHAIN = 16

_HINT = "a config file is `field: value` lines; see docs/reference/config.md"


def read_mapping(path: str | Path) -> LinedDict:
    """One YAML file whose top level must be a mapping (an empty file: ``{}``), not composed."""
    data = load_yaml(path)
    if data is None:
        return LinedDict()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level is a {type(data).__name__}, not a mapping of field: value",
                          hint=_HINT)
    return data


def load_mapping(path: str | Path, normalise: Callable[[LinedDict], LinedDict] | None = None) -> LinedDict:
    """A config file with its ``extends`` chain merged in, each key stamped with its file.
    ``normalise`` rewrites each file's mapping before it is merged (shorthands of a schema)."""
    path = Path(path)
    data = _load_chain(path, [], [], normalise)
    data.source = path
    return data


def _load_chain(path: Path, chain: list[Path], shown: list[str], normalise) -> LinedDict:
    data = read_mapping(path)
    stamp(data, path)
    if normalise is not None:
        data = normalise(data)
    if EXTENDS not in data:
        return data
    ref, line = data[EXTENDS], data.lines.get(EXTENDS)
    where = f"{path}: {EXTENDS}" + (f" (line {line})" if line else "")
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"{where}: give the path of one base config file, relative to this file (got {ref!r})",
                          hint="e.g. `extends: base.yaml`; see docs/reference/config.md")
    base = Path(os.path.normpath(path.parent / Path(ref.strip()).expanduser()))
    chain, shown = [*chain, path.resolve()], [*shown, str(path)]
    if base.resolve() in chain:
        loop = " -> ".join([*shown[chain.index(base.resolve()):], str(base)])
        raise ConfigError(f"{where}: the chain of bases is a cycle: {loop}",
                          hint="a config cannot extend itself, directly or through its bases")
    if len(chain) >= MAX_CHAIN:
        raise ConfigError(f"{where}: more than {MAX_CHAIN} files in the chain of bases ({' -> '.join(shown)} ...)",
                          hint="merge some of the bases into one file")
    if not base.is_file():
        raise ConfigError(f"{where}: {base} " + ("is a folder" if base.is_dir() else "does not exist"),
                          hint=f"`{EXTENDS}` names a config file, relative to the file that extends it")
    return merge(_load_chain(base, chain, shown, normalise), without(data, EXTENDS))


def stamp(data: Any, origin: Path | str, keep_lines: bool = True) -> Any:
    """Mark every key of ``data`` (nested mappings and lists included) as set by ``origin``: a
    file (a ``Path``) or a command-line option (a ``str``, ``--set KEY``)."""
    if isinstance(data, dict):
        if not isinstance(data, LinedDict):
            return stamp(LinedDict(data), origin, keep_lines)
        for key, value in list(data.items()):
            data[key] = stamp(value, origin, keep_lines)
            data.origins[key] = origin
        if not keep_lines:
            data.lines.clear()
    elif isinstance(data, list):
        return [stamp(v, origin, keep_lines) for v in data]
    return data


def without(data: LinedDict, key: str) -> LinedDict:
    out = LinedDict({k: v for k, v in data.items() if k != key}, data.lines, data.origins)
    out.lines.pop(key, None)
    out.origins.pop(key, None)
    return out


def merge(base: Any, over: Any) -> Any:
    """``over`` laid over ``base``: mappings merge key by key (recursively), anything else in
    ``over`` replaces. Neither is changed; lines and origins follow the values."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    lines, origins = dict(getattr(base, "lines", {})), dict(getattr(base, "origins", {}))
    out = LinedDict(base, lines, origins)
    over_lines, over_origins = getattr(over, "lines", {}), getattr(over, "origins", {})
    for key, value in over.items():
        out[key] = merge(base[key], value) if key in base else value
        out.lines.pop(key, None)
        out.origins.pop(key, None)
        if key in over_lines:
            out.lines[key] = over_lines[key]
        if key in over_origins:
            out.origins[key] = over_origins[key]
    return out


__all__ = ["EXTENDS", "MAX_CHAIN", "load_mapping", "merge", "read_mapping", "stamp", "without"]
