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


class RuntimeConfig(_Strict):
    max_hops: int = Field(4, ge=0)
    max_new_tokens: int = Field(256, ge=1)
    #: what to do after a malformed perception span: keep generating, or stop the sample
    on_malformed: Literal["continue", "stop"] = "continue"
    #: deadline of one perception call, in seconds; a call past it fails its own sample only
    #: (``action_timeout`` in the trace). null: no deadline
    action_timeout_s: float | None = Field(120.0, gt=0)


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
        p = self.model.path
        if p is None:
            errors.append((("model", "path"), "not set: point it at a local model folder (perceive never "
                           "downloads)"))
        elif not p.is_dir():
            errors.append((("model", "path"), f"{p} is not a folder" + (" (no such path)" if not p.exists() else "")
                           + ": point it at a local model folder"))
        elif not (p / "config.json").is_file():
            errors.append((("model", "path"), f"{p} has no config.json, so it is not a model folder"))
        for i, e in enumerate(self.encoders):
            if e.weights is not None and not e.weights.exists():
                errors.append((("encoders", i, "weights"), f"{e.weights} does not exist: encoder {e.name!r} "
                               "loads local weights only (a folder or a checkpoint file)"))
        return [self._render(loc, msg) for loc, msg in errors]

    def problems(self, registry) -> list[str]:
        """Everything :meth:`check_names` and :meth:`check_paths` find: what would fail at run time."""
        return self.check_names(registry) + self.check_paths()

    def _render(self, loc: tuple, msg: str) -> str:
        field = ".".join(str(p) for p in loc)
        line = _line_of(self._data, loc) if self._data is not None else None
        return f"{field}" + (f" (line {line})" if line else "") + f": {msg}"


def registry_problems(cfg: PerceiveConfig, registry, *, options_only: bool = False) -> list[tuple[tuple, str]]:
    """``(location, message)`` for every part of ``cfg`` the registry refuses (see
    :meth:`PerceiveConfig.check_names`); ``options_only``: only options that do not fit a known
    action's or encoder's ``Options`` model (what :func:`load_config` refuses)."""
    from perceive.actions import option_errors

    out: list[tuple[tuple, str]] = []
    for name, a in (cfg.actions or {}).items():
        reg = registry.actions.get(name)
        if reg is None:
            if not options_only:
                out.append((("actions", name), f"no such action; {did_you_mean(name, registry.actions)}"))
            continue
        action = reg.obj
        model = getattr(action, "Options", None)
        for err in option_errors(model, a.options):
            out.append((("actions", name, "options", *err["loc"]), _option_msg("action", name, model, err)))
        if options_only or not a.encoder:
            continue
        spec = registry.encoders[a.encoder].obj if a.encoder in registry.encoders else None
        if spec is None:
            out.append((("actions", name, "encoder"), f"no encoder {a.encoder!r}; "
                        f"{did_you_mean(a.encoder, registry.encoders)}"))
        elif not action.encoders:
            out.append((("actions", name, "encoder"), f"action {name!r} is a {action.observation} action and uses "
                        "no encoder: remove `encoder`"))
        elif getattr(action, "layout", spec.layout) != spec.layout:
            out.append((("actions", name, "encoder"), f"action {name!r} takes {action.layout} features but encoder "
                        f"{a.encoder!r} gives a {spec.layout}: use one of {list(action.encoders)}"))
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
        model = getattr(reg.obj, "Options", None)
        for err in option_errors(model, e.options):
            out.append((("encoders", i, "options", *err["loc"]), _option_msg("encoder", e.name, model, err)))
    return out


def _option_msg(kind: str, name: str, model, err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        hint = did_you_mean(str(err["loc"][-1]), model.model_fields) if model.model_fields else None
        msg = f"not an option of {kind} {name!r}; " + (hint or f"{name} takes no options")
    elif err["type"] != "missing" and err["loc"]:  # (a whole-model error would repeat every option)
        msg += f" (got {err['input']!r})"
    return f"{kind} {name!r}: {msg}"


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


# -- perceive config check: run, train and eval configs ----------------------------------------

CONFIG_KINDS = ("run", "train", "eval", "graph")


def config_kind(data: Any) -> tuple[str, str]:
    """Which config a parsed YAML file is (``run``, ``train``, ``eval`` or a ``graph``), and why:
    the kind whose schema knows most of its top-level keys; ``data:`` a mapping means train, a
    path eval."""
    from perceive.eval.runner import EvalConfig
    from perceive.graph.spec import GraphSpec
    from perceive.train.config import TrainConfig

    keys = set(data) if isinstance(data, dict) else set()
    if {"nodes", "start"} <= keys:
        return "graph", "top-level keys nodes and start"
    fields = {"run": set(PerceiveConfig.model_fields), "train": set(TrainConfig.model_fields),
              "eval": set(EvalConfig.model_fields), "graph": set(GraphSpec.model_fields)}
    score = {k: float(len(keys & f)) for k, f in fields.items()}
    if isinstance(data, dict) and "data" in data:
        score["train" if isinstance(data["data"], dict) else "eval"] += 0.5
    score["run"] += 0.25  # ties: a run config, the default kind
    kind = max(score, key=score.get)
    known = sorted(keys & fields[kind])
    why = f"top-level keys {', '.join(known)}" if known else "no top-level keys of another kind"
    return kind, why


def _path_problem(p: Path | None, what: str, *, folder: bool = False, model: bool = False) -> str | None:
    if p is None:
        return None
    if not p.exists():
        return f"{p} does not exist: {what}"
    if folder and not p.is_dir():
        return f"{p} is not a folder: {what}"
    if not folder and p.is_dir():
        return f"{p} is a folder, not a file: {what}"
    if model and not (p / "config.json").is_file():
        return f"{p} has no config.json, so it is not a model folder"
    return None


def _action_option_problems(opts: dict[str, dict], registry, loc: tuple) -> list[tuple[tuple, str]]:
    from perceive.actions import option_errors

    out = []
    for name, o in (opts or {}).items():
        reg = registry.actions.get(name)
        if reg is None:
            out.append(((*loc, name), f"no such action; {did_you_mean(name, registry.actions)}"))
            continue
        model = getattr(reg.obj, "Options", None)
        for err in option_errors(model, o):
            out.append(((*loc, name, *err["loc"]), _option_msg("action", name, model, err)))
    return out


def _train_problems(path: Path, data: Any, registry) -> list[tuple[tuple, str]]:
    from perceive.train.config import load_train_config

    cfg = load_train_config(path)  # ConfigError for schema errors
    out = []
    for attr in ("train", "eval"):
        bad = _path_problem(getattr(cfg.data, attr), "training reads JSONL data from a local file")
        if bad:
            out.append((("data", attr), bad))
    bad = _path_problem(cfg.model.path, "a checkpoint to start from is a local model folder", folder=True, model=True)
    if bad:
        out.append((("model", "path"), bad))
    if cfg.model.path is not None and cfg.model.tiny is not None:
        out.append((("model",), "set `path` (start from a checkpoint) or `tiny` (build a model), not both"))
    out += _action_option_problems(cfg.model.action_defaults or {}, registry, ("model", "action_defaults"))
    return out


def _eval_problems(path: Path, data: Any, registry) -> list[tuple[tuple, str]]:
    from perceive.eval.runner import load_eval_config
    from perceive.graph import check as check_graph
    from perceive.graph import resolve

    cfg = load_eval_config(path)  # ConfigError for schema errors
    out = []
    try:
        check_device(cfg.device)
    except ValueError as exc:
        out.append((("device",), str(exc)))
    bad = _path_problem(cfg.model, "evaluation loads a local model folder", folder=True, model=True)
    if bad:
        out.append((("model",), bad))
    bad = _path_problem(cfg.data, "evaluation reads JSONL data from a local file")
    if bad:
        out.append((("data",), bad))
    try:
        graph = resolve(cfg.graph)
    except FileNotFoundError as exc:
        out.append((("graph",), str(exc)))
    else:
        _, issues = check_graph(graph, registry, cfg.params)
        out += [(("graph",), "graph " + i.render(str(graph))) for i in issues]
    out += _action_option_problems(cfg.action_options, registry, ("action_options",))
    return out


def check_config_file(path: str | Path, kind: str = "auto", registry=None) -> tuple[str, str, list[str]]:
    """What ``perceive config check`` reports: ``(kind, why that kind, problems)``.

    ``kind``: ``run``, ``train``, ``eval`` or ``auto`` (:func:`config_kind`). Problems are
    everything that would fail at run time and can be seen without running: the schema and
    options (raised as :class:`~perceive.errors.ConfigError`), then unknown names, encoders that
    do not fit their action, local paths that do not exist, and for eval configs the graph."""
    from perceive.plugins import get_registry

    path = Path(path)
    registry = registry or get_registry()
    data = load_yaml_mapping(path)
    if kind == "auto":
        kind, why = config_kind(data)
    elif kind in CONFIG_KINDS:
        why = "--kind"
    else:
        raise ConfigError(f"no config kind {kind!r}", hint=f"use one of {', '.join(CONFIG_KINDS)} or auto")
    try:
        if kind == "run":
            return kind, why, load_config(path, registry).problems(registry)
        if kind == "graph":  # what `perceive graph validate` reports
            from perceive.graph import check as check_graph

            issues = check_graph(path, registry)[1]
            return kind, why, [(f"line {i.line}:" if i.line else "") + (f" node '{i.node}':" if i.node else "")
                               + f" {i.message} [{i.code}]" for i in issues]
        found = (_train_problems if kind == "train" else _eval_problems)(path, data, registry)
    except ConfigError as exc:  # the schema or options: say which schema it was checked against
        exc.config_kind, exc.why = kind, why
        raise

    def render(loc: tuple, msg: str) -> str:
        line = _line_of(data, loc)
        return ".".join(str(p) for p in loc) + (f" (line {line})" if line else "") + f": {msg}"

    return kind, why, [render(loc, msg) for loc, msg in found]
