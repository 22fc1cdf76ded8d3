"""The one strict pydantic base of perceive's models, and the one check of options against one.

Every config model (a run, train, eval or graph config, ``perceive.json``, a serve request) and
every plugin-facing argument or option model derives from :class:`StrictModel`, so an unknown
field is an error wherever a value comes from: a typo in a file must never be ignored in silence.
:func:`option_problems` checks the options an action or encoder is given against its ``Options``
model and says what is wrong, field by field, with a "did you mean" for a misspelt one
(:mod:`perceive.actions` exports it with the action contract).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from perceive.errors import ConfigError, did_you_mean


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown fields (``extra="forbid"``). A subclass may add
    settings of its own in ``model_config`` (pydantic merges them over these)."""

    model_config = ConfigDict(extra="forbid")


class FrozenStrictModel(StrictModel):
    """A :class:`StrictModel` whose instances cannot change (hashable values: call arguments,
    action and encoder options)."""

    model_config = ConfigDict(frozen=True)


def option_problems(owner_kind: str, name: str, model: type[BaseModel] | None,
                    options: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, list[tuple[tuple, str]]]:
    """Check ``options`` against an ``Options`` ``model``, validating once: ``(validated, problems)``.

    The one check behind every source of options (a run config's ``actions`` and ``encoders``, a
    graph node, an eval or train config, :func:`~perceive.actions.validate_action_options`,
    :func:`~perceive.encoders.validate_encoder_options`). ``validated``: the options given, coerced
    to the field types (the model's defaults are not filled in), or a copy unchecked when there is
    no model; ``None`` when there are problems. ``problems``: ``(location inside the options,
    message)``, each message ``"<owner_kind> '<name>': ..."``."""
    opts = dict(options or {})
    if model is None:
        return opts, []
    try:
        return model.model_validate(opts).model_dump(exclude_unset=True), []
    except ValidationError as exc:
        errors = exc.errors()
    problems = []
    for err in errors:
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "not an option; " + (did_you_mean(str(loc[-1]), model.model_fields) or f"{name} takes no options")
        elif err["type"] != "missing" and loc:  # (a whole-model error would repeat every option)
            msg += f" (got {err['input']!r})"
        problems.append((loc, f"{owner_kind} {name!r}: {msg}"))
    return None, problems


def options_error(owner_kind: str, name: str, model: type[BaseModel] | None, problems: list[tuple[tuple, str]],
                  source: str | None = None) -> ConfigError:
    """The :class:`~perceive.errors.ConfigError` for :func:`option_problems`' ``problems``: one line
    each, ``field: message``, under ``source`` (where the options came from)."""
    lines = [(f"{source}: " if source else "") + f"{len(problems)} invalid option(s)"]
    lines += [f"  {'.'.join(map(str, loc)) or '(options)'}: {msg}" for loc, msg in problems]
    return ConfigError("\n".join(lines), hint=f"{owner_kind} {name} takes {describe_options(model)}; "
                       "see docs/reference/config.md")


def describe_options(model: type[BaseModel] | None) -> str:
    """``size (int, default 448), ...`` for hints; ``no options`` for an empty model."""
    if model is None:
        return "options not declared (unchecked)"
    parts = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        kind = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
        # a default_factory field has no f.default (PydanticUndefined): show what the factory gives
        default = None if f.is_required() else f.get_default(call_default_factory=True)
        parts.append(f"{name} ({kind}" + ("" if f.is_required() else f", default {default!r}") + ")")
    return ", ".join(parts) or "no options"


__all__ = ["FrozenStrictModel", "StrictModel", "describe_options", "option_problems", "options_error"]
