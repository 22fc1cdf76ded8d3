"""Run configuration: pydantic models (unknown fields are errors), loaded from YAML.

A wrong field gives a :class:`~perceive.errors.ConfigError` naming the field, the file and,
for YAML files, the line. Action and encoder options are checked against the ``Options``
model the plugin declares, when the config is loaded. YAML is read by :mod:`perceive.yamlio`
(safe tags, size, depth and alias limits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from perceive.errors import ConfigError, did_you_mean
from perceive.yamlio import LinedDict as _LinedDict  # noqa: F401 - kept for importers
from perceive.yamlio import load_yaml as _read_yaml

DEVICE_HELP = "auto, cpu, cuda, cuda:N, mps, or another device string torch accepts"


def check_device(value: str) -> str:
    """``value`` if torch can parse it as a device (or it is ``auto``); else ``ValueError``.
    Only parses: no GPU is needed, and whether ``cuda:3`` exists is known only at run time."""
    if value == "auto":
        return value
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{value!r} is not a device: use {DEVICE_HELP}") from None
    return value


#: a device string, checked when the config is loaded
Device = Annotated[str, AfterValidator(check_device)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """The MLLM. ``path`` is a local folder (perceive never downloads)."""

    path: Path | None = None
    base: Literal["qwen2_vl", "qwen2_5_vl"] | None = None


class EncoderConfig(_Strict):
    """One vision encoder: its registry ``name``, local ``weights`` and free ``options``."""

    name: str
    weights: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ActionConfig(_Strict):
    """Options for one action; ``encoder`` picks a re-encode action's encoder by name."""

    enabled: bool = True
    encoder: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


#: the longest deadline of one perception call, in seconds (a day); ``threading.Event.wait``
#: overflows on huge timeouts, so ``.inf`` and ``1e12`` are refused when the config is loaded
MAX_ACTION_TIMEOUT_S = 86400

#: seconds, above 0, at most :data:`MAX_ACTION_TIMEOUT_S`, finite (``.inf`` and ``.nan`` refused)
ActionTimeout = Annotated[float, Field(gt=0, le=MAX_ACTION_TIMEOUT_S, allow_inf_nan=False)]


class RuntimeConfig(_Strict):
    max_hops: int = Field(4, ge=0)
    max_new_tokens: int = Field(256, ge=1)
    #: what to do after a malformed perception span: keep generating, or stop the sample
    on_malformed: Literal["continue", "stop"] = "continue"
    #: deadline of one perception call, in seconds; a call past it fails its own sample only
    #: (``action_timeout`` in the trace), at most a day. null: no deadline
    action_timeout_s: ActionTimeout | None = 120.0


class PerceiveConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    encoders: list[EncoderConfig] = Field(default_factory=list)
    #: per-action settings; actions not listed use defaults. ``None`` enables all installed.
    actions: dict[str, ActionConfig] | None = None
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    device: Device = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: the parsed YAML (with key lines) and its path, when loaded from a file
    _data: Any = PrivateAttr(default=None)
    _source: str | None = PrivateAttr(default=None)

    def encoder_configs(self) -> dict[str, EncoderConfig]:
        return {e.name: e for e in self.encoders}

    def enabled_actions(self) -> list[str] | None:
        if self.actions is None:
            return None
        return [name for name, a in self.actions.items() if a.enabled]

    def check_names(self, registry) -> list[str]:
        """Errors the registry can tell: unknown action and encoder names, an encoder set on an
        action that cannot use it, and options that do not fit an action's or encoder's
        ``Options`` model. Each names the field (and its line for a config loaded from YAML)."""
        return [self._render(loc, msg) for loc, msg in registry_problems(self, registry)]

    def check_paths(self) -> list[str]:
        """Errors for local paths that cannot work: ``model.path`` unset or not a model folder,
        encoder ``weights`` that do not exist."""
        errors = []
        if self.model.path is None:
            errors.append((("model", "path"), "not set: point it at a local model folder (perceive never "
                           "downloads)"))
        else:
            errors.append((("model", "path"), path_problem(self.model.path, "point it at a local model folder",
                                                          folder=True, model=True)))
        for i, e in enumerate(self.encoders):
            errors.append((("encoders", i, "weights"), path_problem(
                e.weights, f"encoder {e.name!r} loads local weights only (a folder or a checkpoint file)",
                folder=None)))
        return [self._render(loc, msg) for loc, msg in errors if msg]

    def problems(self, registry) -> list[str]:
        """Everything :meth:`check_names` and :meth:`check_paths` find: what would fail at run time."""
        return self.check_names(registry) + self.check_paths()

    def _render(self, loc: tuple, msg: str) -> str:
        return render_problem(loc, msg, self._data)


def registry_problems(cfg: PerceiveConfig, registry, *, options_only: bool = False) -> list[tuple[tuple, str]]:
    """``(location, message)`` for every part of ``cfg`` the registry refuses (see
    :meth:`PerceiveConfig.check_names`); ``options_only``: only options that do not fit a known
    action's or encoder's ``Options`` model (what :func:`load_config` refuses)."""
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


def render_problem(loc: tuple, msg: str, data: Any = None) -> str:
    """``field (line N): message``: a problem at ``loc`` of a config, with the line ``data`` (the
    parsed YAML) gives it."""
    line = _line_of(data, loc) if data is not None else None
    return ".".join(str(p) for p in loc) + (f" (line {line})" if line else "") + f": {msg}"


def _line_of(data: Any, loc: tuple) -> int | None:
    line = None
    for key in loc:
        if isinstance(data, _LinedDict) and key in data.lines:
            line = data.lines[key]
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            break
    return line


def format_validation_error(exc: ValidationError, source: str, data: Any = None,
                            model: type[BaseModel] | None = None) -> str:
    lines = [f"{source}: {exc.error_count()} invalid field(s)"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        where = _line_of(data, loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and model is not None:
            allowed = _allowed_fields(model, loc[:-1])
            hint = did_you_mean(str(loc[-1]), allowed) if allowed else None
            if hint:
                msg += f" ({hint})"
        lines.append(f"  {field}" + (f" (line {where})" if where else "") + f": {msg}")
    return "\n".join(lines)


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    cur: Any = model
    for key in loc:
        if isinstance(key, int) or not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            continue
        field = cur.model_fields.get(key)
        if field is None:
            return []
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        cur = next((a for a in [ann, *args] if isinstance(a, type) and issubclass(a, BaseModel)),
                   None)
        if cur is None:
            return []
    return list(cur.model_fields) if isinstance(cur, type) else []


def load_yaml(path: str | Path) -> Any:
    """A YAML file through perceive's one safe reader (:func:`perceive.yamlio.load_yaml`):
    mappings keep their key lines; size, depth and alias limits apply."""
    return _read_yaml(path)


def load_yaml_mapping(path: str | Path) -> _LinedDict:
    """:func:`load_yaml` for a config file: its top level must be a mapping (empty file: ``{}``)."""
    data = load_yaml(path)
    if data is None:
        return _LinedDict()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level is a {type(data).__name__}, not a mapping of field: value",
                          hint="a config file is `field: value` lines; see docs/reference/config.md")
    return data


def load_config(path: str | Path, registry=None) -> PerceiveConfig:
    """Read and validate a run config. Relative paths inside resolve against its folder.

    Options of installed actions and encoders are checked against their ``Options`` models
    (``registry``: default the installed plugins); unknown names are left to
    :meth:`PerceiveConfig.check_names`, which ``perceive config check`` also runs."""
    data = load_yaml_mapping(path)
    try:
        cfg = PerceiveConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), data, PerceiveConfig),
                          hint="see docs/reference/config.md for the fields") from None
    cfg._data, cfg._source = data, str(path)
    if registry is None:
        from perceive.plugins import get_registry

        registry = get_registry()
    bad = registry_problems(cfg, registry, options_only=True)
    if bad:
        lines = [f"{path}: {len(bad)} invalid option(s)"] + ["  " + cfg._render(loc, msg) for loc, msg in bad]
        raise ConfigError("\n".join(lines), hint="`perceive plugins list` shows the installed actions and "
                          "encoders; docs/reference/config.md lists each one's options")
    base = Path(path).parent
    if cfg.model.path and not cfg.model.path.is_absolute():
        cfg.model.path = base / cfg.model.path
    for e in cfg.encoders:
        if e.weights and not e.weights.is_absolute():
            e.weights = base / e.weights
    return cfg
