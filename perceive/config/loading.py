"""Loading a config: its files composed (``extends`` chains, ``--set`` and flags), validated
against a schema, relative paths rebased, plugin options checked.

:func:`load_config` reads a run config (:class:`~perceive.config.run_config.PerceiveConfig`, or a
subclass: the eval config); :func:`compose`, :func:`validate` and :func:`rebase_paths` are the
steps every kind of config (run, train, eval) shares. A wrong field gives a
:class:`~perceive.errors.ConfigError` naming the field, the file and, for YAML files, the line
(or the ``--set`` that wrote it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel, ValidationError

from perceive.config.checks import registry_problems
from perceive.config.files import load_mapping, merge
from perceive.config.origins import format_validation_error, rebase
from perceive.config.overrides import Override, apply_overrides
from perceive.config.run_config import PerceiveConfig
from perceive.config.safe_yaml import LinedDict
from perceive.errors import ConfigError


def load_yaml_mapping(path: str | Path, normalise: Callable | None = None) -> LinedDict:
    """A config file's mapping (an empty file: ``{}``), its ``extends`` chain merged in; each key
    knows its line and file (see :mod:`perceive.config.files`)."""
    return load_mapping(path, normalise)


def model_shorthand(data: LinedDict) -> LinedDict:
    """``model: DIR`` as ``model: {path: DIR}``, so that a file and its base merge field by field."""
    if isinstance(data.get("model"), str):
        lines, origins = data.lines, data.origins
        data["model"] = LinedDict({"path": data["model"]}, {"path": lines["model"]} if "model" in lines else {},
                                   {"path": origins["model"]} if "model" in origins else {})
    return data


def config_files(path: str | Path | Iterable[str | Path] | None) -> list[Path]:
    """``path`` as a list of files (``None``: none)."""
    if path is None:
        return []
    return [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]


def compose(path: str | Path | Iterable[str | Path] | None, overrides: Iterable[Override] = (),
            normalise: Callable | None = None) -> LinedDict:
    """What a command validates: the config file (``None``: none; several: each laid over the
    one before, as if it extended it) with its bases, then the command line's ``overrides``
    (``--set``, then flags)."""
    data = LinedDict()
    for i, file in enumerate(config_files(path)):
        layer = load_yaml_mapping(file, normalise)
        data = merge(data, layer) if i else layer
        data.source = layer.source
    data = apply_overrides(data, overrides)
    return normalise(data) if normalise is not None else data


def validate(schema: type[BaseModel], data: LinedDict, source: str):
    """``schema`` validated from ``data``; a :class:`ConfigError` naming each field and where it
    was written otherwise."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, data, schema),
                          hint="see docs/reference/config.md for the fields") from None


def rebase_paths(cfg: BaseModel, data: LinedDict, locs: Iterable[tuple], folder: Path | None) -> None:
    """Each relative path at ``locs`` of ``cfg``, made relative to the file that wrote it
    (``folder``: the config file's own)."""
    for loc in locs:
        parent = cfg
        for key in loc[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        value = getattr(parent, loc[-1])
        setattr(parent, loc[-1], rebase(value, data, loc, folder))


def load_config(path: str | Path | Iterable[str | Path] | None, registry=None, *, overrides: Iterable[Override] = (),
                schema: type[PerceiveConfig] | None = None, normalise: Callable | None = None) -> PerceiveConfig:
    """Read and validate a run config (``path`` ``None``: the defaults), its ``extends`` chain
    merged and ``overrides`` applied. A relative path resolves against the folder of the file
    that wrote it (the working folder for one from the command line). ``schema``: a subclass
    (the eval config); ``normalise``: its shorthands, for each file and the command line
    (default :func:`model_shorthand`).

    Options of installed actions and encoders are checked against their ``Options`` models
    (``registry``: default the installed plugins); unknown names are left to
    :meth:`PerceiveConfig.check_names`, which ``perceive config check`` and
    :meth:`perceive.loop.PerceptionLoop.from_config` run."""
    schema = schema or PerceiveConfig
    files = config_files(path)
    source = str(files[-1]) if files else "the command line"
    data = compose(files, overrides, normalise or model_shorthand)
    cfg = validate(schema, data, source)
    cfg._data, cfg._source = data, source
    if registry is None:
        from perceive.plugins import get_registry

        registry = get_registry()
    bad = registry_problems(cfg, registry, options_only=True)
    if bad:
        lines = [f"{source}: {len(bad)} invalid option(s)"] + ["  " + cfg.render(loc, msg) for loc, msg in bad]
        raise ConfigError("\n".join(lines), hint="`perceive plugins list` shows the installed actions and "
                          "encoders; docs/reference/config.md lists each one's options")
    folder = files[-1].parent if files else None
    rebase_paths(cfg, data, cfg.path_fields(), folder)
    if cfg.graph.endswith((".yaml", ".yml")):  # a graph file, not a shipped graph's name
        cfg.graph = str(rebase(Path(cfg.graph), data, ("graph",), folder))
    for i, graph in enumerate(cfg.mcp.graphs or []):  # perceive mcp's graphs, files or shipped names alike
        if graph.endswith((".yaml", ".yml")):
            cfg.mcp.graphs[i] = str(rebase(Path(graph), data, ("mcp", "graphs", i), folder))
    return cfg


__all__ = ["compose", "config_files", "load_config", "load_yaml_mapping", "model_shorthand", "rebase_paths",
           "validate"]
