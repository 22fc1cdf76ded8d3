"""The action contract: what a perception-action plugin declares and implements.

An action declares

* ``name``: unique across all installed plugins;
* ``grammar``: the special-token strings that open and close its span and the tokens allowed
  inside (a :class:`TriggerGrammar`);
* ``Args``: a pydantic model of its typed arguments, and ``parse(pieces) -> Args`` from a
  closed span;
* ``observation``: ``"view"``, ``"features"`` or ``"text"``;
* ``run(call, context)``: returns one :class:`~perceive.View` / :class:`~perceive.Features` /
  :class:`~perceive.observations.Text` or a list of them.

Optionally ``Options``: a pydantic model (``extra="forbid"``) of the options ``run`` reads from
``context.options`` (config ``actions.<name>.options``), so that a wrong option is refused when
the config is loaded; see :func:`validate_action_options`. Without one, options are not checked.

and, for the conformance kit, ``examples()`` (argument values to run it with) and optionally
``args_for_box(box)`` (arguments that target an explicit box, for actions that take one).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from PIL import Image
from pydantic import AfterValidator, BaseModel, ValidationError, model_validator

from perceive.encoders import layout_mismatch
from perceive.geometry import ROOT, Box, Frame
from perceive.images import as_rgb
from perceive.observations import OBSERVATION_KINDS, Features, ObservationKind, Text, View
from perceive.strict import FrozenStrictModel

# the check of a plugin's options lives with the strict base; the action contract exports it too
from perceive.strict import describe_options as describe_options
from perceive.strict import option_problems as option_problems
from perceive.strict import options_error as options_error

_SPECIAL = re.compile(r"<\|[^|<>\s]+\|>")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class TriggerGrammar(FrozenStrictModel):
    """The tokens of one action's span: ``start (inner)* end``.

    Every string must be a special-token literal of the form ``<|name|>``.
    """

    start: str
    end: str
    inner: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _well_formed(self) -> TriggerGrammar:
        for tok in (self.start, self.end, *self.inner):
            if not _SPECIAL.fullmatch(tok):
                raise ValueError(f"token {tok!r} is not a special-token literal like '<|name|>'")
        if self.start == self.end:
            raise ValueError(f"start and end are the same token {self.start!r}")
        clash = {self.start, self.end} & set(self.inner)
        if clash:
            raise ValueError(f"inner tokens repeat the start/end token: {sorted(clash)}")
        if len(set(self.inner)) != len(self.inner):
            raise ValueError("inner tokens contain duplicates")
        return self

    @property
    def tokens(self) -> tuple[str, ...]:
        return (self.start, *self.inner, self.end)


class SpanError(ValueError):
    """Raised by ``Action.parse`` for a span it cannot read. ``kind`` is a ParseErrorKind value."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


class NoArgs(FrozenStrictModel):
    """``Args`` of an action whose span takes no arguments."""


class NoOptions(FrozenStrictModel):
    """``Options`` of an action that reads no options: any option given is an error."""


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


class EncoderOptions(FrozenStrictModel):
    """``Options`` of a features action: ``encoder``, the registered encoder to use (config
    ``actions.<name>.encoder``, or a graph node's ``encoder``); default: the action's first."""

    encoder: str | None = None


@dataclass(frozen=True)
class ActionCall:
    """One perception call: which action, its typed arguments, and where it came from.

    ``target`` is the id of the view whose pixel frame the arguments refer to (``"root"`` for
    the original image). ``tokens`` are the raw span strings, start and end included; calls
    built by a graph with given arguments have ``tokens == ()`` and ``forced=True``.
    """

    action: str
    args: BaseModel
    target: str = ROOT
    tokens: tuple[str, ...] = ()
    token_ids: tuple[int, ...] = ()
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "args": self.args.model_dump(mode="json"),
            "target": self.target,
            "tokens": list(self.tokens),
            "forced": self.forced,
        }


@dataclass
class ActionContext:
    """What an action may use while it runs.

    ``image`` is the target view's pixels (RGB PIL) and ``frame`` its frame; ``root`` is the
    original image. ``features(encoder, view)`` returns cached encoder output. ``options`` are
    this action's options (config ``actions.<name>.options``, a graph node's, the model's trained
    defaults): when the call runs, an instance of the action's ``Options`` model, validated, its
    defaults filled in (``context.options.size``); a dict, unchecked, for an action without one
    (see :func:`action_options`). Actions must not mutate any image they are given.
    """

    image: Image.Image
    frame: Frame
    root: Image.Image
    options: BaseModel | dict[str, Any] = field(default_factory=dict)
    encoders: Any = None  # perceive.encoders.EncoderHub
    device: str = "cpu"
    _ids: Any = field(default_factory=lambda: itertools.count(1), repr=False)
    id_prefix: str = "v"

    @classmethod
    def for_image(cls, image: Image.Image, **kw) -> ActionContext:
        """A context whose target is the original image itself."""
        return cls(image=image, frame=Frame.root(*image.size), root=image, **kw)

    def for_action(self, action: Action) -> ActionContext:
        """This context with ``options`` as ``action`` reads them (:func:`action_options`); the
        same view ids (a copy sharing the id counter). :func:`perceive.dispatch.dispatch` gives each
        call's hooks this context."""
        return dataclasses.replace(self, options=action_options(action, self.options))

    def new_view_id(self) -> str:
        return f"{self.id_prefix}{next(self._ids)}"

    def root_box(self, box_in_target: Box) -> Box:
        """``box_in_target`` mapped to the original image, clipped to it and widened to whole
        pixels (floor the low corner, ceil the high one; integer boxes are unchanged).

        Raises :class:`~perceive.errors.ActionInputError` when nothing of it is inside.
        """
        from perceive.errors import ActionInputError

        rb = self.frame.to_root(box_in_target).clip(*self.root.size)
        ib = Box(math.floor(rb.x0), math.floor(rb.y0), math.ceil(rb.x1), math.ceil(rb.y1), ROOT)
        if ib.is_empty():
            raise ActionInputError(
                f"box {box_in_target.as_tuple()} in view {self.frame.id!r} lies outside the "
                f"{self.root.size[0]}x{self.root.size[1]} image",
                hint="choose a box that overlaps the image",
            )
        return ib

    def crop_root(self, box_in_target: Box, *, out_size: tuple[int, int] | None = None,
                  label: str | None = None) -> View:
        """A view of ``box_in_target`` cut from the full-resolution original image (see
        :meth:`root_box`), resampled (bicubic) to ``out_size`` when given. RGB."""
        ib = self.root_box(box_in_target)
        crop = as_rgb(self.root.crop(ib.as_int_tuple()))
        if out_size is not None and tuple(out_size) != crop.size:
            crop = crop.resize(tuple(int(v) for v in out_size), Image.Resampling.BICUBIC)
        frame = Frame.root(*self.root.size).child(self.new_view_id(), ib, crop.size)
        frame = dataclasses.replace(frame, parent=self.frame.id)
        return View(image=crop, frame=frame, label=label)


class Action:
    """Base class for perception actions. Subclass it and set the class attributes."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    grammar: ClassVar[TriggerGrammar | None] = None
    Args: ClassVar[type[BaseModel]] = NoArgs
    observation: ClassVar[ObservationKind] = "view"
    #: encoder names (registry keys) this action can use; empty for view actions.
    encoders: ClassVar[tuple[str, ...]] = ()
    #: the options ``run`` reads from ``context.options``: a pydantic model, ideally with
    #: ``extra="forbid"``. ``None``: options reach ``run`` unchecked, as a plain dict.
    Options: ClassVar[type[BaseModel] | None] = None

    def parse(self, pieces: Sequence[str]) -> BaseModel:
        """Typed arguments from a closed span.

        ``pieces`` are the strings between start and end: grammar tokens as they are, and runs
        of ordinary text split around anything that looks like ``<|...|>``. Raise
        :class:`SpanError` (or ``ValueError``) for a span you cannot read; never anything else.
        The default accepts an empty span.
        """
        leftover = [p for p in pieces if p.strip()]
        if leftover:
            raise SpanError("unexpected_token", f"{self.name} takes no arguments, got {leftover}")
        return self.Args()

    def run(self, call: ActionCall, context: ActionContext) -> View | Features | Text | list:
        raise NotImplementedError(f"action {self.name!r} does not implement run()")

    def examples(self) -> list[BaseModel]:
        """Argument values the conformance kit runs the action with. At least one."""
        return [self.Args()]

    def args_for_box(self, box: Box) -> BaseModel | None:
        """Arguments that make the action look at ``box``, or ``None`` if it takes no box."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def action_problems(action: Any) -> list[str]:
    """Everything wrong with an action's declaration (empty list when well formed)."""
    if not isinstance(action, Action):
        return [f"{action!r} is not a perceive.Action instance"]
    problems = []
    if not isinstance(action.name, str) or not _NAME.fullmatch(action.name or ""):
        problems.append(f"name {action.name!r} must match [a-z][a-z0-9_]*")
    if not isinstance(action.grammar, TriggerGrammar):
        problems.append(f"grammar must be a TriggerGrammar, got {type(action.grammar).__name__}")
    if not (isinstance(action.Args, type) and issubclass(action.Args, BaseModel)):
        problems.append("Args must be a pydantic BaseModel subclass")
    if action.observation not in OBSERVATION_KINDS:
        problems.append(f"observation must be one of {', '.join(map(repr, OBSERVATION_KINDS))}, "
                        f"got {action.observation!r}")
    if type(action).run is Action.run:
        problems.append("run(call, context) is not implemented")
    if not isinstance(action.encoders, tuple | list) or not all(
        isinstance(e, str) for e in action.encoders
    ):
        problems.append("encoders must be a tuple of encoder names")
    if action.observation == "features" and not action.encoders:
        problems.append("a features action must name the encoders it can use")
    opts = getattr(action, "Options", None)
    if opts is not None and not (isinstance(opts, type) and issubclass(opts, BaseModel)):
        problems.append("Options must be None or a pydantic BaseModel subclass")
    return problems


def encoder_problem(action: Action, encoder: str, spec: Any) -> str | None:
    """Why ``action`` cannot use the encoder ``encoder`` (its ``EncoderSpec``; ``None`` for a name
    the registry does not know, which callers report their own way), or ``None``: a view action
    uses no encoder; a features action needs the feature layout it takes. The one check behind a
    run config's ``actions.<name>.encoder`` and a graph node's ``encoder``."""
    if not action.encoders:
        return f"action {action.name!r} is a {action.observation} action and uses no encoder: remove `encoder`"
    layout = getattr(action, "layout", None)
    if spec is not None and layout is not None and spec.layout != layout:
        return ": ".join(layout_mismatch(action, encoder, spec.layout))
    return None


def validate_action_options(action: Action, options: Mapping[str, Any] | None,
                            source: str | None = None) -> dict[str, Any]:
    """``options`` for ``action`` checked against its ``Options`` model: the dict to give the
    action as ``context.options``. Only the options given are returned (coerced to the field
    types), so the action's own defaults still apply. An action without an ``Options`` model gets
    a copy of ``options`` unchecked.

    Raises :class:`~perceive.errors.ConfigError` naming the action, each bad field and ``source``
    (where the options came from, e.g. ``LoopOptions.action_options``).
    """
    model = getattr(action, "Options", None)
    validated, problems = option_problems("action", action.name, model, options)
    if problems:
        raise options_error("action", action.name, model, problems, source)
    return validated


#: what dict-style reads of ``context.options`` say, for the release they keep working
OPTIONS_AS_DICT = ("context.options is the action's validated Options instance: read context.options.{attr} "
                   "(dict-style access, {key}, is deprecated and goes in the next release)")


class _DictReads:
    """The dict reads ``context.options`` allowed when it was the dict of the options given, for one
    release: each warns. They see only the options given (what the dict held), so code that laid
    them over its own defaults (``{"size": 448, **context.options}``) behaves as before."""

    def _given(self, key: object) -> dict[str, Any]:
        attr = key if isinstance(key, str) and key.isidentifier() else "<name>"
        warnings.warn(OPTIONS_AS_DICT.format(attr=attr, key=repr(key) if attr == key else key), DeprecationWarning,
                      stacklevel=3)
        return self.model_dump(exclude_unset=True)  # type: ignore[attr-defined]

    def __getitem__(self, key: str) -> Any:
        return self._given(key)[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._given(key).get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._given(key)

    def keys(self):  # `**context.options` and `dict(context.options)` read keys() then [key]
        return self._given(".keys()").keys()

    def items(self):
        return self._given(".items()").items()

    def values(self):
        return self._given(".values()").values()


@functools.cache
def _with_dict_reads(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with the deprecated dict reads: a subclass, so ``isinstance(options, model)`` holds
    and ``model.model_validate(options)`` returns it as it is."""
    names = {"__module__": model.__module__, "__qualname__": model.__qualname__, "__doc__": model.__doc__}
    return type(model.__name__, (_DictReads, model), names)


def action_options(action: Action, options: Mapping[str, Any] | BaseModel | None,
                   source: str | None = None) -> BaseModel | dict[str, Any]:
    """What ``action.run`` reads as ``context.options``: ``options`` (a mapping, or an ``Options``
    instance already) validated into an instance of ``action.Options``, its defaults filled in and
    ``model_fields_set`` naming the options given; a copy of the dict, unchecked, for an action
    without an ``Options`` model. Raises :class:`~perceive.errors.ConfigError` as
    :func:`validate_action_options` does."""
    model = getattr(action, "Options", None)
    if model is not None and isinstance(options, _DictReads) and isinstance(options, model):
        return options  # built for this action already
    given = options.model_dump(exclude_unset=True) if isinstance(options, BaseModel) else dict(options or {})
    if model is None:
        return given
    try:
        return _with_dict_reads(model).model_validate(given)
    except ValidationError:
        raise options_error("action", action.name, model, option_problems("action", action.name, model, given)[1],
                            source) from None
