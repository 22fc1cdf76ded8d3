"""The run config on the command line: ``--config FILE``, ``--set KEY.PATH=VALUE`` and the
flags that override them, shared by ``ask``, ``graph run`` and ``eval``.

Precedence, highest first: a command's own flag (``--max-hops 2``), ``--set``, the config file,
the files it extends, the schema's default (see :mod:`perceive.config.files`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from perceive.config.overrides import Override, parse_sets

CONFIG_HELP = ("A run config (YAML): model, encoders, actions, graph and params, runtime, device, dtype "
               "(docs/reference/config.md). Flags and --set override its values.")
SET_HELP = ("Override a config value: KEY.PATH=VALUE, e.g. runtime.max_hops=2 or actions.zoom.options.size=336 "
            "(VALUE is YAML). A bare KEY that is not a config field is a graph param: max_hops=2. Repeatable.")


def cli_overrides(sets: list[str] | None, flags: list[tuple[tuple, Any, str]], fields=None) -> list[Override]:
    """``--set`` items (a malformed one is a usage error), then each flag given (``(path, value,
    flag name)``; ``None``: not given), in that order: a flag wins over ``--set``."""
    try:
        out = parse_sets(sets, fields)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--set'") from None
    return out + [Override(path, value, name) for path, value, name in flags if value is not None]


def run_config(config: Path | None, sets: list[str] | None, flags: list[tuple[tuple, Any, str]], *,
               model_required: bool = True, threads: bool = True):
    """The run config of ``ask`` and ``graph run``: ``config`` (or none) with ``--set`` and the
    flags applied; no model anywhere: the shipped default model (``models/default``), and without
    one a usage error unless not ``model_required``. ``threads``: set torch's threads now (not for
    ``perceive mcp``, which imports torch only when a graph tool loads its model)."""
    from perceive.config import PerceiveConfig, load_config

    cfg = load_config(config, overrides=cli_overrides(sets, flags, PerceiveConfig.model_fields))
    check_set_params(cfg)
    if threads:
        from perceive.threads import set_torch_threads

        set_torch_threads(cfg.runtime.threads)  # once, before the model runs (docs/performance.md#threads)
    if cfg.model.path is None:
        from perceive.defaults import default_model_path

        cfg.model.path = default_model_path()
        if cfg.model.path is None and model_required:
            from perceive.cli.output import fail

            raise fail("no model given. Pass --model DIR (or model.path in --config) with a local VPT or Qwen2-VL "
                       "checkpoint.", 2)
    return cfg


def check_image_folder(cfg, section: str, who: str) -> None:
    """``cfg.<section>.allow_local_images`` must be a folder (``serve``, ``mcp``): a one-line error
    naming where it was set. ``who``: the clients that name images there, for the hint."""
    from perceive.cli.output import fail
    from perceive.errors import ConfigError

    images = getattr(cfg, section).allow_local_images
    if images is not None and not images.is_dir():
        raise fail(ConfigError(f"{cfg.source}: " + cfg.render((section, "allow_local_images"),
                                                               f"{images} is not a folder"),
                               hint=f"point {section}.allow_local_images at the folder whose images {who} may name"))


REMOTE_HELP = ("Drive a model served at this OpenAI-compatible base URL (vLLM, SGLang, perceive serve), e.g. "
               "http://127.0.0.1:8000/v1, instead of loading one (remote.url). Several endpoints serving the same "
               "model share an eval's load: repeat the flag, or separate the URLs with commas.")
REMOTE_MODEL_HELP = "The served model's id (remote.model; default: the endpoint's first)."


def remote_flags(remote: list[str] | str | None, remote_model: str | None) -> list[tuple[tuple, Any, str]]:
    """``--remote URL`` (repeatable, or URLs separated by commas) and ``--remote-model NAME`` as
    config overrides: one URL is ``remote.url: URL``, several a list (checked by the schema)."""
    urls = None
    if remote:
        given = [remote] if isinstance(remote, str) else remote
        urls = [u.strip() for flag in given for u in flag.split(",") if u.strip()] or list(given)
        urls = urls[0] if len(urls) == 1 else urls
    return [(("remote", "url"), urls, "--remote"), (("remote", "model"), remote_model, "--remote-model")]


def loop_flags(model: Path | None, max_new_tokens: int | None, device: str | None, dtype: str | None,
               reprefill: bool, action_timeout: float | None,
               threads: int | None = None) -> list[tuple[tuple, Any, str]]:
    """The flags every command that runs the loop takes (:mod:`perceive.cli.options`), as config
    overrides."""
    return [(("model", "path"), model, "--model"), (("runtime", "max_new_tokens"), max_new_tokens, "--max-new-tokens"),
            (("device",), device, "--device"), (("dtype",), dtype, "--dtype"),
            (("runtime", "reprefill"), True if reprefill else None, "--reprefill"),
            (("runtime", "action_timeout_s"), action_timeout, "--action-timeout"),
            (("runtime", "threads"), threads, "--threads")]


def check_set_params(cfg) -> None:
    """A bare ``--set KEY=VALUE`` is a graph param: refuse one the graph does not declare (most
    likely a config field misspelt), as a usage error."""
    from perceive.cli.output import fail
    from perceive.config import load_yaml
    from perceive.errors import ConfigError, did_you_mean
    from perceive.graph import resolve
    from perceive.graph.spec import placeholders

    params = cfg._data.get("params") if cfg._data is not None else None
    bare = [k for k, origin in getattr(params, "origins", {}).items() if origin == f"--set {k}"]
    if not bare:
        return
    try:
        graph = load_yaml(resolve(cfg.graph))
    except (OSError, ConfigError):
        return  # compiling the graph reports it
    # its params: those it declares, and those it reads without a default (max_hops: the run's)
    declared = list((graph.get("params") or {}) if isinstance(graph, dict) else {})
    declared += sorted(placeholders(graph) - set(declared)) if isinstance(graph, dict) else []
    fields = [*type(cfg).model_fields, *(f"{section}.{f}" for section in ("runtime", "sampling", "serve", "mcp")
                                         for f in type(getattr(cfg, section)).model_fields)]
    for key in bare:
        if key not in declared:
            raise fail(f"--set {key}: not a config field, nor a param of the graph {cfg.graph} (its params: "
                       f"{', '.join(declared) or 'none'}); {did_you_mean(key, [*fields, *declared])}", 2)
