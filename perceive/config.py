"""Run configuration: pydantic models (unknown fields are errors), loaded from YAML.

The run config (:class:`PerceiveConfig`) is the one config of a run: the model, the encoders
and their local weights, each action's options, the graph and its params, the runtime limits,
sampling, the device and the dtype, and ``perceive serve``'s settings (the sections the loop and
the server read are :mod:`perceive.settings`). ``perceive ask``, ``perceive graph run``,
``perceive eval`` and ``perceive serve`` read it with ``--config FILE`` (an eval config is a run
config plus what to evaluate on:
:class:`perceive.eval.runner.EvalConfig`); in Python, :meth:`perceive.loop.PerceptionLoop.from_config`.

A file may extend another (``extends: base.yaml``) and the command line overrides its values
(``--set KEY.PATH=VALUE``, then the command's own flags): see :mod:`perceive.config_files`.
A wrong field gives a :class:`~perceive.errors.ConfigError` naming the field, the file and,
for YAML files, the line (or the ``--set`` that wrote it). Action and encoder options are
checked against the ``Options`` model the plugin declares, when the config is loaded. YAML is
read by :mod:`perceive.yamlio` (safe tags, size, depth and alias limits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from perceive.actions import Device
from perceive.config_files import (  # noqa: F401 - format_validation_error, render_problem: kept for importers
    Override,
    apply_overrides,
    format_validation_error,
    load_mapping,
    merge,
    rebase,
    render_problem,
)
from perceive.encoders import branch_option_problems
from perceive.errors import ConfigError, did_you_mean
from perceive.settings import (  # noqa: F401 - ActionTimeout, MAX_ACTION_TIMEOUT_S, RuntimeConfig: for importers
    AUTO_PROTOCOL,
    DEFAULT_GRAPH,
    MAX_ACTION_TIMEOUT_S,
    ActionTimeout,
    RuntimeConfig,
    SamplingConfig,
    ServeConfig,
)
from perceive.strict import StrictModel
from perceive.yamlio import LinedDict as _LinedDict
from perceive.yamlio import load_yaml as _read_yaml


class ModelConfig(StrictModel):
    """The MLLM. ``path`` is a local folder (perceive never downloads); ``model: DIR`` is short
    for ``model: {path: DIR}``."""

    path: Path | None = None
    base: Literal["qwen2_vl", "qwen2_5_vl"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, (str, Path)) else value


class EncoderConfig(StrictModel):
    """One vision encoder: its registry ``name``, local ``weights`` and free ``options``."""

    name: str
    weights: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ActionConfig(StrictModel):
    """Options for one action; ``encoder`` picks a re-encode action's encoder by name."""

    enabled: bool = True
    encoder: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ProtocolConfig(StrictModel):
    """The tool-call protocol the model speaks: ``protocol: hermes_json``, or
    ``protocol: {name: hermes_json, options: {coordinates: relative_1000}}``. ``auto`` (the
    default): the one the model's files declare (perceive.protocols.detect): ``vpt`` for a
    perceive/VPT model, ``hermes_json`` for a chat template with a tools section; otherwise the
    run is refused, asking for a name."""

    name: str = AUTO_PROTOCOL
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value


class RemoteConfig(StrictModel):
    """A model served elsewhere, driven through its OpenAI-compatible chat endpoint (vLLM, SGLang,
    ``perceive serve``): ``remote: {url: http://host:8000/v1, model: Qwen/Qwen3-VL-8B-Instruct}``."""

    url: str
    #: the served model's id (unset: the endpoint's first, GET /v1/models)
    model: str | None = None
    #: ``client``: perceive runs actions and graph, the endpoint generates; ``server``: perceive serve runs all
    mode: Literal["client", "server"] = "client"
    #: the environment variable holding the API key (unset: none)
    api_key_env: str | None = None
    timeout_s: float = Field(120.0, gt=0)
    #: retries of a request answered 429 or 5xx, or timed out (exponential backoff)
    max_retries: int = Field(3, ge=0, le=20)
    concurrency: int = Field(8, ge=1, le=1024)


class PerceiveConfig(StrictModel):
    """A run: the model, its graph, the plugins' settings and the loop's (``runtime``, ``sampling``;
    :class:`perceive.loop.LoopOptions` is built from them by
    :func:`perceive.loop.options.options_from_config`), and ``perceive serve``'s (``serve``)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    #: the perception graph: a shipped graph's name (``graphs/*.yaml``) or a graph file (relative
    #: to the config that names it)
    graph: str = DEFAULT_GRAPH
    #: the graph's params (its ``${name}`` values), over the graph's own defaults; a graph's
    #: ``max_hops`` is ``runtime.max_hops`` unless set here (see :meth:`graph_params`)
    params: dict[str, Any] = Field(default_factory=dict)
    encoders: list[EncoderConfig] = Field(default_factory=list)
    #: per-action settings; actions not listed use defaults. ``None`` enables all installed.
    actions: dict[str, ActionConfig] | None = None
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    #: how the next token is chosen (greedy by default)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    #: the tool-call protocol the model speaks (``perceive protocols list``); default ``auto``
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    device: Device = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: a served model to drive instead of a local one (``--remote URL``); ``model`` is then unused
    remote: RemoteConfig | None = None
    #: ``perceive serve``'s settings (its flags override them); other commands ignore them
    serve: ServeConfig = Field(default_factory=ServeConfig)
    #: the parsed YAML (with key lines) and its path, when loaded from a file
    _data: Any = PrivateAttr(default=None)
    _source: str | None = PrivateAttr(default=None)

    def path_fields(self) -> list[tuple]:
        """Where this config holds local paths (relative ones resolve against their file's folder)."""
        return [("model", "path"), *(("encoders", i, "weights") for i in range(len(self.encoders))),
                ("serve", "allow_local_images")]

    def graph_params(self) -> dict[str, Any]:
        """The params the run gives its graph: ``params`` over the run's hop budget as ``max_hops``
        (``runtime.max_hops``), which every graph that reads ``${max_hops}`` takes as its budget and
        any other graph ignores (see :func:`perceive.graph.compile_graph`)."""
        return {"max_hops": self.runtime.max_hops, **self.params}

    @property
    def source(self) -> str:
        """Where the config came from, for messages."""
        return self._source or "the run config"

    def refuse(self, errors: list[str]) -> None:
        """Raise one :class:`ConfigError` listing ``errors`` (nothing when there are none)."""
        if errors:
            raise ConfigError("\n".join([f"{self.source}: {len(errors)} problem(s)",
                                         *("  " + e for e in errors)]),
                              hint="`perceive plugins list` shows the installed actions and encoders, with the "
                                   "width of each encoder's features")

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
        return [self.render(loc, msg) for loc, msg in registry_problems(self, registry)]

    def check_paths(self) -> list[str]:
        """Errors for local paths that cannot work: ``model.path`` unset or not a model folder,
        encoder ``weights`` that do not exist."""
        return [self.render(loc, msg) for loc, msg in run_path_problems(self) if msg]

    def problems(self, registry) -> list[str]:
        """Everything :meth:`check_names` and :meth:`check_paths` find: what would fail at run time."""
        return self.check_names(registry) + self.check_paths()

    def render(self, loc: tuple, msg: str) -> str:
        """A problem at ``loc`` as text, with its YAML line when the config came from a file."""
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


def load_yaml(path: str | Path) -> Any:
    """A YAML file through perceive's one safe reader (:func:`perceive.yamlio.load_yaml`):
    mappings keep their key lines; size, depth and alias limits apply."""
    return _read_yaml(path)


def load_yaml_mapping(path: str | Path, normalise: Callable | None = None) -> _LinedDict:
    """A config file's mapping (an empty file: ``{}``), its ``extends`` chain merged in; each key
    knows its line and file (see :mod:`perceive.config_files`)."""
    return load_mapping(path, normalise)


def model_shorthand(data: _LinedDict) -> _LinedDict:
    """``model: DIR`` as ``model: {path: DIR}``, so that a file and its base merge field by field."""
    if isinstance(data.get("model"), str):
        lines, origins = data.lines, data.origins
        data["model"] = _LinedDict({"path": data["model"]}, {"path": lines["model"]} if "model" in lines else {},
                                   {"path": origins["model"]} if "model" in origins else {})
    return data


def config_files(path: str | Path | Iterable[str | Path] | None) -> list[Path]:
    """``path`` as a list of files (``None``: none)."""
    if path is None:
        return []
    return [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]


def compose(path: str | Path | Iterable[str | Path] | None, overrides: Iterable[Override] = (),
            normalise: Callable | None = None) -> _LinedDict:
    """What a command validates: the config file (``None``: none; several: each laid over the
    one before, as if it extended it) with its bases, then the command line's ``overrides``
    (``--set``, then flags)."""
    data = _LinedDict()
    for i, file in enumerate(config_files(path)):
        layer = load_yaml_mapping(file, normalise)
        data = merge(data, layer) if i else layer
        data.source = layer.source
    data = apply_overrides(data, overrides)
    return normalise(data) if normalise is not None else data


def validate(schema: type[BaseModel], data: _LinedDict, source: str):
    """``schema`` validated from ``data``; a :class:`ConfigError` naming each field and where it
    was written otherwise."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, data, schema),
                          hint="see docs/reference/config.md for the fields") from None


def rebase_paths(cfg: BaseModel, data: _LinedDict, locs: Iterable[tuple], folder: Path | None) -> None:
    """Each relative path at ``locs`` of ``cfg``, made relative to the file that wrote it
    (``folder``: the config file's own)."""
    for loc in locs:
        parent = cfg
        for key in loc[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, key)
        value = getattr(parent, loc[-1])
        setattr(parent, loc[-1], rebase(value, data, loc, folder))


def run_path_problems(cfg: PerceiveConfig) -> list[tuple[tuple, str]]:
    """``model.path`` unset or not a model folder (unless ``remote``), missing encoder ``weights``."""
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


def encoder_fit_problems(cfg: PerceiveConfig, branches: dict, registry) -> list[tuple[tuple, str]]:
    """Each action's ``encoder`` whose features do not fit the model's branch (``branches``), and
    encoder options the branch would ignore (:func:`perceive.encoders.branch_option_problems`)."""
    out = [(("actions", name, "encoder"), why) for name, a in (cfg.actions or {}).items()
           if (why := encoder_width_problem(name, a.encoder, branches, registry))]
    return out + branch_option_problems(cfg.encoders, branches, registry)


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
    return cfg
