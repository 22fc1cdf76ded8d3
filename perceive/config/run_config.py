"""The run config's schema: :class:`PerceiveConfig` and its sections (unknown fields are errors).

The run config is the one config of a run: the model, the encoders and their local weights, each
action's options, the graph and its params, the runtime limits, sampling, the device and the
dtype, and ``perceive serve``'s settings (the sections the loop and the server read are
:mod:`perceive.config.settings`). An eval config is a run config plus what to evaluate on
(:class:`perceive.eval.runner.EvalConfig`). It is read by :func:`perceive.config.load_config`;
what a run would refuse, the schema aside, is :mod:`perceive.config.checks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, field_validator, model_validator

from perceive.actions import Device
from perceive.config.checks import registry_problems, run_path_problems
from perceive.config.origins import render_problem
from perceive.config.settings import AUTO_PROTOCOL, DEFAULT_GRAPH, McpConfig, RuntimeConfig, SamplingConfig, ServeConfig
from perceive.errors import ConfigError
from perceive.strict import StrictModel


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
    ``perceive serve``): ``remote: {url: http://host:8000/v1, model: Qwen/Qwen3-VL-8B-Instruct}``.
    Several endpoints serving the same model share the load: ``url: [http://a:8000/v1,
    http://b:8000/v1]`` (each sample runs all its turns on one of them)."""

    #: the endpoint's /v1 base URL, or a list of them (a string with commas is a list); one URL
    #: stays a string, several are a list (:attr:`urls` is always a list)
    url: str | list[str]
    #: the served model's id (unset: the endpoint's first, GET /v1/models)
    model: str | None = None
    #: ``client``: perceive runs actions and graph, the endpoint generates; ``server``: perceive serve runs all
    mode: Literal["client", "server"] = "client"
    #: the environment variable holding the API key (unset: none)
    api_key_env: str | None = None
    timeout_s: float = Field(120.0, gt=0)
    #: retries of a request answered 429 or 5xx, or timed out (exponential backoff)
    max_retries: int = Field(3, ge=0, le=20)
    #: requests in flight at once, across all the endpoints together (a sample has one in flight
    #: at a time, so this is also the samples running at once); each endpoint batches its own
    concurrency: int = Field(8, ge=1, le=1024)

    @field_validator("url", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> Any:
        """Each an http(s) URL, none twice; ``"a,b"`` is ``[a, b]``; a list of one is its URL."""
        urls = value.split(",") if isinstance(value, str) else value
        if not isinstance(urls, list):
            return value  # the type check says what is wrong
        urls = [u.strip() if isinstance(u, str) else u for u in urls]
        urls = [u for u in urls if u != ""]  # "a,b," or a blank line in a YAML list
        if not urls:
            raise ValueError("no URL: give the endpoint's /v1 base URL, e.g. http://127.0.0.1:8000/v1")
        seen: set[str] = set()
        for u in urls:
            if not isinstance(u, str):
                return value
            parts = urlsplit(u)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{u!r} is not an http(s) URL: give each endpoint's /v1 base URL, e.g. "
                                 "http://127.0.0.1:8000/v1")
            if u.rstrip("/") in seen:
                raise ValueError(f"{u} is listed twice: give each endpoint once")
            seen.add(u.rstrip("/"))
        return urls[0] if len(urls) == 1 else urls

    @property
    def urls(self) -> list[str]:
        """Every endpoint's base URL, in the order given (one: ``[url]``)."""
        return [self.url] if isinstance(self.url, str) else list(self.url)


class PerceiveConfig(StrictModel):
    """A run: the model, its graph, the plugins' settings and the loop's (``runtime``, ``sampling``;
    :class:`perceive.loop.LoopOptions` is built from them by
    :func:`perceive.loop.options.options_from_config`), ``perceive serve``'s (``serve``) and
    ``perceive mcp``'s (``mcp``)."""

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
    #: ``perceive mcp``'s settings (its flags override them); other commands ignore them
    mcp: McpConfig = Field(default_factory=McpConfig)
    #: the parsed YAML (with key lines) and its path, when loaded from a file
    _data: Any = PrivateAttr(default=None)
    _source: str | None = PrivateAttr(default=None)

    def path_fields(self) -> list[tuple]:
        """Where this config holds local paths (relative ones resolve against their file's folder)."""
        return [("model", "path"), *(("encoders", i, "weights") for i in range(len(self.encoders))),
                ("serve", "allow_local_images"), ("mcp", "allow_local_images")]

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


__all__ = ["ActionConfig", "EncoderConfig", "ModelConfig", "PerceiveConfig", "ProtocolConfig", "RemoteConfig"]
