"""Run configuration: pydantic models (unknown fields are errors), loaded from YAML.

A wrong field gives a :class:`~perceive.errors.ConfigError` naming the field, the file and,
for YAML files, the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perceive.errors import ConfigError, did_you_mean


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
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    def encoder_configs(self) -> dict[str, EncoderConfig]:
        return {e.name: e for e in self.encoders}

    def enabled_actions(self) -> list[str] | None:
        if self.actions is None:
            return None
        return [name for name, a in self.actions.items() if a.enabled]

    def check_names(self, registry) -> list[str]:
        """Errors for action and encoder names the registry does not know."""
        errors = []
        for name, a in (self.actions or {}).items():
            if name not in registry.actions:
                errors.append(f"actions.{name}: no such action; "
                              f"{did_you_mean(name, registry.actions)}")
            if a.encoder and a.encoder not in registry.encoders:
                errors.append(f"actions.{name}.encoder: no encoder {a.encoder!r}; "
                              f"{did_you_mean(a.encoder, registry.encoders)}")
        for e in self.encoders:
            if e.name not in registry.encoders:
                errors.append(f"encoders: no encoder {e.name!r}; "
                              f"{did_you_mean(e.name, registry.encoders)}")
        return errors


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key."""


def _construct_mapping(loader, node, deep=False):
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if hasattr(k, "value")}
    return _LinedDict(mapping, lines)


class _LinedDict(dict):
    def __init__(self, data, lines):
        super().__init__(data)
        self.lines = lines


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


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
        msg = err["msg"]
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
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def load_config(path: str | Path) -> PerceiveConfig:
    """Read and validate a config file. Relative paths inside resolve against its folder."""
    data = load_yaml(path) or {}
    try:
        cfg = PerceiveConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), data, PerceiveConfig),
                          hint="see docs/reference/config.md for the fields") from None
    base = Path(path).parent
    if cfg.model.path and not cfg.model.path.is_absolute():
        cfg.model.path = base / cfg.model.path
    for e in cfg.encoders:
        if e.weights and not e.weights.is_absolute():
            e.weights = base / e.weights
    return cfg
