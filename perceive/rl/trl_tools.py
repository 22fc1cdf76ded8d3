"""perceive's crop actions as tools of TRL's ``GRPOTrainer``, for stock Qwen-family VLMs.

TRL runs a tool on the sample it belongs to only through ``environment_factory``: the trainer
makes one environment per rollout, calls its ``reset(**row)`` with the rollout's dataset row
(so the tool knows the sample's ``image``) and exposes its public methods as tools
(``trl/trainer/grpo_trainer.py``: ``GRPOTrainer.__init__`` and ``_generate_and_score_completions``).
A tool that returns a list of content blocks holding ``{"type": "image", "image": PIL}`` has its
images shown to the model in the tool turn and fed to the loss's forward (``_tool_call_loop``).
A tool that raises has ``{"error": message}`` shown instead and counts in
``tools/failure_frequency``; the rollout goes on.

:func:`perception_environment` builds that environment class from :class:`CropTool` specs: each
tool is ``NAME(bbox_2d, label="", img_idx=0)`` (DeepEyes' and Qwen3-VL's ``image_zoom_in_tool``
by default), read by perceive's ``hermes_json`` protocol (its coordinate modes, clamping and
small-box rules) and run through the registry's dispatch on the view it names, so the crop is the
one perceive's loop shows for the same call, its frame exact in the original image's pixels.
A call perceive cannot run raises :class:`ToolCallError`, which TRL hands back to the model.
"""

from __future__ import annotations

import dataclasses
import itertools
import keyword
import warnings
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar

from PIL import Image
from pydantic import Field

from perceive.actions import ActionCall, ActionContext, validate_action_options
from perceive.dispatch import FailureStage, dispatch
from perceive.errors import ActionInputError, ConfigError
from perceive.geometry import ROOT, Box, Frame
from perceive.images import as_rgb, orientation
from perceive.observations import View
from perceive.protocols.base import BoxProblem
from perceive.protocols.calls import ParseErrorKind
from perceive.strict import FrozenStrictModel

#: method names TRL does not expose as tools (``reset``, ``get_reward``) or that would shadow the environment's own
_RESERVED = frozenset({"reset", "get_reward", "hops"})


class Coordinates(str, Enum):
    """How ``bbox_2d`` is written (``hermes_json``'s ``coordinates``)."""

    __str__ = str.__str__

    ABSOLUTE = "absolute"  # pixels of the named image as the dataset holds it (DeepEyes)
    ABSOLUTE_RESIZED = "absolute_resized"  # pixels of the image as the processor resized it (stock Qwen2.5-VL)
    RELATIVE_1000 = "relative_1000"  # 0-1000 of the image's width and height (Qwen3-VL)


class CropTool(FrozenStrictModel):
    """One tool: the registered view ``action`` it runs (one that takes a box: ``region_select``,
    ``zoom``, ...), under the function ``name`` the model calls, with ``action_options`` (the
    action's ``Options``, e.g. zoom's ``{"size": 448}``)."""

    name: str = "image_zoom_in_tool"
    action: str = "region_select"
    coordinates: Coordinates = Coordinates.ABSOLUTE
    action_options: dict[str, Any] = Field(default_factory=dict)
    #: the function's description in the tool schema (None: a sentence naming the crop)
    description: str | None = None
    #: text after the image(s) in the tool turn (DeepEyes puts its user prompt there)
    response_text: str = ""


class ToolCallError(ActionInputError):
    """A tool call perceive cannot run: a malformed or degenerate box, an image index never shown,
    or the action's own failure. ``kind`` is the protocol's :class:`ParseErrorKind` for a call it
    refuses, or the dispatch :class:`FailureStage` for an action that failed. TRL's trainer shows
    the model ``{"error": message}`` and counts it in ``tools/failure_frequency``."""

    def __init__(self, message: str, *, kind: ParseErrorKind | FailureStage):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class ToolHop:
    """One tool call of a rollout, as the environment ran it: the ``arguments`` the model gave,
    the ``views`` it produced (their frames map exactly to the original image: ``box`` is each
    one's region there, root pixels), or the ``error`` shown instead."""

    tool: str
    arguments: Mapping[str, Any]
    action: str | None = None
    target: str | None = None
    views: tuple[Frame, ...] = ()
    repairs: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def boxes(self) -> list[Box]:
        """Each view's region of the original image (root frame, pixels)."""
        return [f.root_box() for f in self.views]


class PerceptionEnvironment:
    """The per-rollout state behind perceive's tools: the sample's image, the views shown so far
    (``img_idx`` k names the k-th; 0 the image itself) and :attr:`hops`, the calls made (a reward
    function reads them through TRL's ``environments`` keyword). Build the class with
    :func:`perception_environment`; TRL calls it with no arguments, once per rollout slot."""

    _registry: ClassVar[Any] = None
    _tools: ClassVar[dict[str, CropTool]] = {}
    _protocols: ClassVar[dict[str, Any]] = {}
    _seen_size: ClassVar[Callable[[Image.Image], tuple[int, int]] | None] = None
    _timeout_s: ClassVar[float | None] = None

    def __init__(self):
        self._root: Image.Image | None = None
        self._views: dict[str, View] = {}
        self._seen: dict[str, tuple[int, int]] = {}
        self._ids = itertools.count(1)
        self.hops: list[ToolHop] = []

    def reset(self, **row: Any) -> None:
        """Start a rollout on ``row``'s image (TRL passes the dataset row: ``image``, or ``images``
        holding one image). The image must be upright as stored: the model sees its pixels as they are."""
        images = row.get("images") or []
        if len(images) > 1:  # img_idx would name the sample's second image, not the first crop
            raise ConfigError(f"a dataset row holds {len(images)} images: perceive's tools work on one image per "
                              "sample, as its loop does", hint="give each row one image")
        image = row.get("image", images[0] if images else None)
        if not isinstance(image, Image.Image):
            raise ConfigError("perceive's tools crop the sample's image, and this dataset row has no PIL image "
                              f"in `image` or `images` (columns: {sorted(row)})",
                              hint="give the dataset an `image` column of PIL images")
        if orientation(image) not in (0, 1):
            raise ConfigError("a dataset image carries an EXIF orientation: the model would see it as stored and "
                              "the crops would not match it",
                              hint="apply PIL.ImageOps.exif_transpose to the images when you build the dataset")
        self._root = as_rgb(image)
        self._views, self._seen, self._ids, self.hops = {}, {}, itertools.count(1), []
        if self._seen_size is not None:
            self._seen[ROOT] = self._seen_size(self._root)

    # -- running a call -------------------------------------------------------------------------

    def _frames(self) -> list[Frame]:
        """``[original, first view, ...]``: what ``img_idx`` indexes, with the size each was seen at."""
        frames = [Frame.root(*self._root.size), *(v.frame for v in self._views.values())]
        return [dataclasses.replace(f, seen=self._seen.get(f.id)) for f in frames]

    def _image(self, view_id: str) -> Image.Image:
        return self._root if view_id == ROOT else self._views[view_id].image

    def _run(self, name: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
        """Run the tool ``name`` on ``arguments``: its image content blocks, or :class:`ToolCallError`."""
        if self._root is None:
            raise ToolCallError(f"{name} was called before reset(): no image to crop", kind=FailureStage.BEFORE)
        spec = self._tools[name]
        action = self._registry.action(spec.action)
        frames = self._frames()
        try:
            res = self._protocols[name].resolve(name, arguments, frames, {action.name: action})
        except BoxProblem as exc:
            raise self._refuse(name, arguments, f"{name}: {exc}", exc.kind) from None
        target = res.target or ROOT
        frame = next(f for f in frames if f.id == target)
        # copies: a plugin that paints on its input must not change the rollout's images
        context = ActionContext(image=self._image(target).copy(), frame=frame, root=self._root.copy(),
                                options=dict(spec.action_options), _ids=self._ids)
        result = dispatch(self._registry.pm, action, ActionCall(action.name, res.args, target), context,
                          timeout_s=self._timeout_s)
        if not result.ok:
            failure = result.failure
            raise self._refuse(name, arguments, f"{name}: the {action.name} action failed: {failure.message}",
                               failure.stage, action.name, target)
        views = result.observation  # a tuple of checked views (perceive.observations.check_observation)
        for view in views:
            self._views[view.frame.id] = view
            if self._seen_size is not None:
                self._seen[view.frame.id] = self._seen_size(view.image)
        self.hops.append(ToolHop(name, dict(arguments), action.name, target, tuple(v.frame for v in views),
                                 res.repairs))
        blocks: list[dict[str, Any]] = [{"type": "image", "image": v.image} for v in views]
        return blocks + ([{"type": "text", "text": spec.response_text}] if spec.response_text else [])

    def _refuse(self, name: str, arguments: Mapping[str, Any], message: str, kind: ParseErrorKind | FailureStage,
                action: str | None = None, target: str | None = None) -> ToolCallError:
        self.hops.append(ToolHop(name, dict(arguments), action, target, error=message))
        return ToolCallError(message, kind=kind)


# -- building the environment class ---------------------------------------------------------------


_BOX_DOC = {
    Coordinates.ABSOLUTE: "in pixels of that image",
    Coordinates.ABSOLUTE_RESIZED: "in pixels of that image as you see it",
    Coordinates.RELATIVE_1000: "in relative coordinates, 0-1000 of that image's width and height",
}


def _docstring(spec: CropTool) -> str:
    """A Google-style docstring: transformers' ``get_json_schema`` builds the tool schema from it."""
    summary = spec.description or ("Zoom in on a region of an image by cropping it to a bounding box, and look at "
                                   "the crop.")
    return (f"{summary}\n\n"
            "Args:\n"
            "    bbox_2d: The region as [x1, y1, x2, y2], top-left then bottom-right corner, "
            f"{_BOX_DOC[spec.coordinates]}\n"
            "    label: The name of the object in the region\n"
            "    img_idx: Which image to crop: 0 the original, k the k-th crop shown so far\n")


def _tool_method(spec: CropTool) -> Callable[..., list[dict[str, Any]]]:
    """The environment method the model calls as ``spec.name``."""

    # no annotation on self or the return: transformers' get_json_schema would list them as parameters
    def tool(self, bbox_2d: list[float], label: str = "", img_idx: int = 0):
        return self._run(spec.name, {"bbox_2d": bbox_2d, "label": label, "img_idx": img_idx})

    tool.__name__ = tool.__qualname__ = spec.name
    tool.__doc__ = _docstring(spec)
    return tool


def _check_tool(spec: CropTool, registry, seen_size) -> Any:
    """``spec``'s ``hermes_json`` reader, after checking the spec against the registry; raises
    :class:`ConfigError` (or ``UnknownActionError``) naming what to change."""
    if not spec.name.isidentifier() or keyword.iskeyword(spec.name) or spec.name.startswith("_") \
            or spec.name in _RESERVED:
        raise ConfigError(f"tool name {spec.name!r} cannot be an environment method TRL exposes",
                          hint="use a Python identifier that does not start with '_' and is not "
                               f"{' or '.join(sorted(_RESERVED))}")
    action = registry.action(spec.action)
    takes_box = action.args_for_box(Box(0, 0, 1, 1)) is not None
    if action.observation != "view" or not takes_box:
        raise ConfigError(f"action {spec.action!r} gives {action.observation} and takes "
                          f"{'a box' if takes_box else 'no box'}: a TRL tool runs a view action that crops a box",
                          hint="use region_select, zoom or another view action with args_for_box")
    validate_action_options(action, spec.action_options, f"CropTool {spec.name!r} action_options")
    if spec.coordinates is Coordinates.ABSOLUTE_RESIZED and seen_size is None:
        raise ConfigError("coordinates absolute_resized needs the size the model sees each image at",
                          hint="pass image_processor= (the processor's image_processor) to perception_environment")
    return registry.protocol("hermes_json", {"coordinates": spec.coordinates.value, "action": spec.action,
                                             "tool_name": spec.name, "declare": False})


def seen_size_of(image_processor) -> Callable[[Image.Image], tuple[int, int]]:
    """``image -> (width, height)`` the model sees it at after ``image_processor`` (a Qwen-VL
    image processor: its grid of ``patch_size`` patches)."""
    patch = int(getattr(image_processor, "patch_size", 14))

    def seen(image: Image.Image) -> tuple[int, int]:
        grid = image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
        return int(grid[2]) * patch, int(grid[1]) * patch

    return seen


def perception_environment(tools: Sequence[CropTool] = (CropTool(),), *, registry=None, image_processor=None,
                           timeout_s: float | None = 120.0) -> type[PerceptionEnvironment]:
    """An environment class for ``GRPOTrainer(environment_factory=...)`` whose methods are ``tools``.

    ``registry``: where the actions come from (default: ``perceive.plugins.get_registry()``).
    ``image_processor``: the model's (``processor.image_processor``), needed only for
    ``coordinates: absolute_resized``. ``timeout_s``: each call's timeout (None: none).
    Raises :class:`ConfigError` for a tool that cannot be built (an unknown action, one that
    does not crop a box, wrong options, a reserved or repeated name)."""
    if registry is None:
        from perceive.plugins import get_registry

        registry = get_registry()
    if not tools:
        raise ConfigError("perception_environment needs at least one CropTool", hint="pass tools=[CropTool()]")
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise ConfigError(f"tool names repeat: {names}", hint="give each CropTool its own name")
    seen = seen_size_of(image_processor) if image_processor is not None else None
    protocols = {t.name: _check_tool(t, registry, seen) for t in tools}
    namespace: dict[str, Any] = {t.name: _tool_method(t) for t in tools}
    namespace.update(_registry=registry, _tools={t.name: t for t in tools}, _protocols=protocols,
                     _seen_size=staticmethod(seen) if seen else None, _timeout_s=timeout_s,
                     __doc__=f"perceive's tools {names} for TRL's GRPOTrainer (environment_factory).")
    return type("PerceptionEnvironment", (PerceptionEnvironment,), namespace)


def enable_tool_calls(processor):
    """``processor`` ready for TRL's tool loop: its chat template must render tool calls and tool
    turns (TRL's ``supports_tool_calling``); when the tokenizer has no response parser and TRL does
    not know the template, the Hermes ``<tool_call>`` JSON parser TRL uses for the Qwen family is set.
    Raises :class:`ConfigError` when the template has no tool section (stock Qwen2.5-VL's)."""
    from trl.chat_template_utils import add_response_schema, supports_tool_calling

    if not supports_tool_calling(processor):
        raise ConfigError("the processor's chat template cannot render tool calls and tool turns",
                          hint="set processor.chat_template to one with a tools section (Qwen2.5-VL: verl's "
                               "qwen_vl_tool_chat_template.jinja2; Qwen3-VL's own template has one)")
    _warn_if_numpy_images(processor)
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        try:
            add_response_schema(processor)
        except ValueError:  # a template TRL does not know: the Qwen family's <tool_call> JSON
            from trl import chat_template_utils as ctu

            if ctu._SUPPORTS_RESPONSE_TEMPLATE:
                tokenizer.response_template = ctu.qwen3_template
            else:
                tokenizer.response_schema = ctu.qwen3_schema
    return processor


def _warn_if_numpy_images(processor) -> None:
    """TRL 1.16 renders each prompt alone under ``environment_factory`` and concatenates its image
    fields only when they are torch tensors (``GRPOTrainer._tokenize_prompts``); numpy arrays (the
    PIL image processor's, used without torchvision) become lists, and ``_tool_call_loop`` fails on
    them (``split_pixel_values_by_grid``) in a batch where no tool call has returned an image yet."""
    import torch

    if not hasattr(processor, "image_processor"):
        return
    probe = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (32, 32))},
                                          {"type": "text", "text": "?"}]}]
    out = processor.apply_chat_template([probe], tokenize=True, return_dict=True)
    if not isinstance(out.get("pixel_values"), torch.Tensor | None):
        warnings.warn(f"{type(processor.image_processor).__name__} gives numpy image fields: TRL 1.16's tool loop "
                      "under environment_factory fails on them when every tool call of a batch fails; install "
                      "torchvision and load the processor with its torchvision image processor", UserWarning,
                      stacklevel=3)


__all__ = ["Coordinates", "CropTool", "PerceptionEnvironment", "ToolCallError", "ToolHop", "enable_tool_calls",
           "perception_environment", "seen_size_of"]
