"""The run config's own checks: what would fail at run time, found without running.

Each function returns ``(location, message)`` pairs (a location is a key path in the config,
``("actions", "zoom", "options", "size")``) that
:meth:`~perceive.config.run_config.PerceiveConfig.render` turns into text with the line that wrote
the value. ``cfg`` is a :class:`~perceive.config.run_config.PerceiveConfig` (or a subclass: the
eval config); the schema imports these checks, not the other way round. ``perceive config check`` runs them, with the
other kinds' own, in :mod:`perceive.cli.config_check`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perceive.encoders import branch_option_problems
from perceive.errors import ConfigError, did_you_mean


def registry_problems(cfg, registry, *, options_only: bool = False) -> list[tuple[tuple, str]]:
    """``(location, message)`` for every part of run config ``cfg`` the registry refuses (see
    :meth:`~perceive.config.run_config.PerceiveConfig.check_names`); ``options_only``: only options
    that do not fit a known action's or encoder's ``Options`` model (what
    :func:`~perceive.config.loading.load_config` refuses)."""
    from perceive.actions import encoder_problem, option_problems

    actions = cfg.actions or {}
    out = action_option_problems({n: a.options for n, a in actions.items()}, registry, ("actions",),
                                 inner=("options",), unknown=not options_only)
    for name, a in actions.items():
        if options_only or not a.encoder or name not in registry.actions:
            continue
        reg = registry.encoders.get(a.encoder)
        bad = (encoder_problem(registry.actions[name].obj, a.encoder, reg.obj) if reg is not None
               else f"no encoder {a.encoder!r}; {did_you_mean(a.encoder, registry.encoders)}")
        if bad:
            out.append((("actions", name, "encoder"), bad))
    if not options_only and getattr(registry, "protocols", None) is not None and cfg.protocol.name != "auto":
        try:
            registry.protocol(cfg.protocol.name, cfg.protocol.options)
        except ConfigError as exc:
            out.append((("protocol",), exc.message + (f"; {exc.hint}" if exc.hint else "")))
    seen: set[str] = set()
    for i, e in enumerate(cfg.encoders):
        reg = registry.encoders.get(e.name)
        if reg is None:
            if not options_only:
                out.append((("encoders", i, "name"), f"no encoder {e.name!r}; "
                            f"{did_you_mean(e.name, registry.encoders)}"))
            continue
        if e.name in seen and not options_only:
            out.append((("encoders", i, "name"), f"encoder {e.name!r} is listed twice: merge the entries"))
        seen.add(e.name)
        problems = option_problems("encoder", e.name, getattr(reg.obj, "Options", None), e.options)[1]
        out += [(("encoders", i, "options", *loc), msg) for loc, msg in problems]
    return out


def action_option_problems(options: dict[str, Any], registry, loc: tuple, *, inner: tuple = (),
                           unknown: bool = True) -> list[tuple[tuple, str]]:
    """``(location, message)`` for per-action ``options`` (action name -> its options) at ``loc``
    in a config: an unknown action name (``unknown``), options that do not fit the action's
    ``Options`` model (at ``(*loc, name, *inner, field)``); see :func:`perceive.actions.option_problems`."""
    from perceive.actions import option_problems

    out: list[tuple[tuple, str]] = []
    for name, opts in (options or {}).items():
        reg = registry.actions.get(name)
        if reg is None:
            if unknown:
                out.append(((*loc, name), f"no such action; {did_you_mean(name, registry.actions)}"))
            continue
        problems = option_problems("action", name, getattr(reg.obj, "Options", None), opts)[1]
        out += [((*loc, name, *inner, *where), msg) for where, msg in problems]
    return out


def path_problem(p: Path | None, what: str, *, folder: bool | None = False, model: bool = False) -> str | None:
    """Why local path ``p`` cannot work (``what``: what it should be), or ``None`` (also for no
    path). ``folder``: it must be a folder (``False``: a file, ``None``: either); ``model``: a
    model folder (with a ``config.json``)."""
    if p is None:
        return None
    if not p.exists():
        return f"{p} does not exist: {what}"
    if folder and not p.is_dir():
        return f"{p} is not a folder: {what}"
    if folder is False and p.is_dir():
        return f"{p} is a folder, not a file: {what}"
    if model and not (p / "config.json").is_file():
        return f"{p} has no config.json, so it is not a model folder"
    return None


def run_path_problems(cfg) -> list[tuple[tuple, str]]:
    """In run config ``cfg``: ``model.path`` unset or not a model folder (unless ``remote``), missing
    encoder ``weights``."""
    out = [] if cfg.remote is not None and cfg.model.path is None else [(
        ("model", "path"), "not set: point it at a local model folder (perceive never downloads), or at a served "
        "one with remote.url" if cfg.model.path is None else path_problem(
            cfg.model.path, "point it at a local model folder", folder=True, model=True))]
    for i, e in enumerate(cfg.encoders):
        out.append((("encoders", i, "weights"), path_problem(
            e.weights, f"encoder {e.name!r} loads local weights only (a folder or a checkpoint file)", folder=None)))
    return out


def encoder_width_problem(action: str, encoder: str | None, branches: dict, registry) -> str | None:
    """Why ``encoder`` cannot feed ``action``'s branch (``branches``: the model's, by action): its
    features are not as wide as the branch's projector takes. None when it fits, or when either
    side is unknown."""
    branch = branches.get(action)
    reg = registry.encoders.get(encoder) if encoder else None
    dim = getattr(getattr(reg, "obj", None), "feature_dim", None)
    if branch is None or dim is None or dim == branch.feature_dim:
        return None
    return (f"{encoder!r} gives {dim}-wide features but the model's {action} projector takes "
            f"{branch.feature_dim}: use an encoder with {branch.feature_dim}-wide output, e.g. {branch.encoder!r}")


def encoder_fit_problems(cfg, branches: dict, registry) -> list[tuple[tuple, str]]:
    """Each action of run config ``cfg`` whose ``encoder`` gives features that do not fit the model's
    branch (``branches``), and encoder options the branch would ignore
    (:func:`perceive.encoders.branch_option_problems`)."""
    out = [(("actions", name, "encoder"), why) for name, a in (cfg.actions or {}).items()
           if (why := encoder_width_problem(name, a.encoder, branches, registry))]
    return out + branch_option_problems(cfg.encoders, branches, registry)


__all__ = ["action_option_problems", "encoder_fit_problems", "encoder_width_problem", "path_problem",
           "registry_problems", "run_path_problems"]
