"""What a perception action returns.

Three kinds: the paper's two token families, and text:

* :class:`View`: a new image (a crop, a zoom, a tile) to be encoded by the MLLM's own vision
  tower and shown as a new image turn. Its :class:`~perceive.geometry.Frame` maps its pixels
  back to the original image exactly.
* :class:`Features`: embeddings computed by a vision encoder, to be injected at placeholder
  tokens after the model's projector conditions them on the control hidden state.
* :class:`Text`: words a tool read in a view, with their boxes in the original's pixels.

Every observation must hold the :class:`Invariant` s; :func:`check_observation` checks them, for
dispatch at run time and for the conformance kit alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

from PIL import Image, ImageChops

from perceive.errors import ObservationError
from perceive.geometry import ROOT, Box, Frame
from perceive.images import as_rgb

ObservationKind = Literal["view", "features", "text"]
#: every observation kind, in the order the docs list them
OBSERVATION_KINDS: tuple[str, ...] = ("view", "features", "text")


@dataclass(frozen=True, eq=False)
class View:
    """A new image for the MLLM.

    ``image`` is an RGB PIL image of exactly ``frame.width`` x ``frame.height`` pixels.
    ``frame`` maps its pixels to the root image; ``frame.parent`` is the view it was chosen in.
    """

    image: Image.Image
    frame: Frame
    label: str | None = None

    @property
    def box(self) -> Box:
        """The region of the original image this view shows (root frame, pixels)."""
        return self.frame.root_box()

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "view",
            "frame": self.frame.to_dict(),
            "box": self.box.to_dict(),
            "size": list(self.image.size),
            "label": self.label,
        }


@dataclass(frozen=True, eq=False)
class Features:
    """Encoder features of one view, to be placed at ``num_placeholders`` placeholder tokens.

    ``tensor`` is the encoder's raw output for one image, in the layout its
    :class:`~perceive.encoders.EncoderSpec` declares: ``(N, C)`` tokens or a ``(C, H, W)`` map.
    float32 or the model dtype, on the encoder's device. The model's projector (its re-encode
    branch of the action's name) turns it into ``(num_placeholders, hidden)`` rows, conditioned on
    the control hidden state the loop attaches.
    """

    tensor: Any
    encoder: str
    placeholder: str
    num_placeholders: int
    source: Frame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def box(self) -> Box:
        return self.source.root_box()

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "features",
            "encoder": self.encoder,
            "placeholder": self.placeholder,
            "num_placeholders": self.num_placeholders,
            "shape": list(getattr(self.tensor, "shape", ())),
            "dtype": str(getattr(self.tensor, "dtype", "")),
            "source": self.source.to_dict(),
            "box": self.box.to_dict(),
        }


@dataclass(frozen=True, eq=False)
class Text:
    """Text a tool produced about one view: OCR output, what a detector found written as words.

    ``text`` is what the model is shown (one user turn, as it is). ``boxes`` are the pieces it
    was read from, each ``(Box in the original image's pixels, its text)``, in reading order;
    empty when the tool gives no positions (or found nothing: ``text`` may be ``""``).
    ``source`` is the frame of the view the tool read (the call's target view); ``region``
    the part of it read, in the original image's pixels (``None``: the whole view).
    """

    text: str
    source: Frame
    boxes: tuple[tuple[Box, str], ...] = ()
    region: Box | None = None
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def box(self) -> Box:
        """The region of the original image the text was read from (root frame, pixels)."""
        return self.region if self.region is not None else self.source.root_box()

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "text",
            "text": self.text,
            "boxes": [{"box": b.to_dict(), "text": t} for b, t in self.boxes],
            "source": self.source.to_dict(),
            "box": self.box.to_dict(),
            "label": self.label,
        }


Observation = tuple[View, ...] | tuple[Features, ...] | tuple[Text, ...]


# -- invariants ---------------------------------------------------------------------------------


class Invariant(str, Enum):
    """What every observation an action returns must satisfy. :func:`check_observation` checks
    them all on every call: dispatch runs it at run time (a breach is the hop's error, stage
    ``observation``) and the conformance kit gets it through dispatch, so the two cannot drift."""

    __str__ = str.__str__
    KIND = "kind"  # at least one item, each of the kind the action declares
    VIEW_RGB = "view_rgb"  # a view's image is an RGB PIL image
    VIEW_SIZE = "view_size"  # its frame is a Frame of exactly its image's width x height
    VIEW_INSIDE = "view_inside"  # its box (root pixels) is non-empty and inside the original image
    VIEW_PARENT = "view_parent"  # its frame's parent is the view the call ran on
    VIEW_SCALE = "view_scale"  # its frame's scale times its size is its box's size
    VIEW_PIXELS = "view_pixels"  # a 1:1 view holds exactly the original's pixels under its box
    TEXT_TYPES = "text_types"  # text is a str; boxes a tuple of (Box, str) pairs
    TEXT_SOURCE = "text_source"  # source is the frame of the view the call ran on
    TEXT_REGION = "text_region"  # the region read is a root-frame Box inside the original image
    TEXT_BOXES = "text_boxes"  # each box is in the root frame, inside the region read
    FEATURES_TENSOR = "features_tensor"  # a torch.Tensor
    FEATURES_FINITE = "features_finite"  # no NaN or inf
    FEATURES_LAYOUT = "features_layout"  # the encoder's layout ((N, C) tokens, (C, H, W) map) and width
    FEATURES_PLACEHOLDERS = "features_placeholders"  # num_placeholders > 0
    FEATURES_SOURCE = "features_source"  # source is the frame of the view the call ran on


_TYPES = {"view": View, "features": Features, "text": Text}


class CallContext(Protocol):
    """What :func:`check_observation` reads of a call's context (an
    :class:`~perceive.actions.ActionContext` is one; declared here, so that observations need no
    actions): ``frame``, the view the call ran on; ``root``, the original RGB image; ``encoders``,
    the run's encoder hub (``specs``; None: features go unchecked against an encoder)."""

    @property
    def frame(self) -> Frame: ...
    @property
    def root(self) -> Image.Image: ...
    @property
    def encoders(self) -> Any: ...


def check_observation(action: str, declared: ObservationKind, result: Any, context: CallContext) -> Observation:
    """``result`` (what ``action``'s ``run`` returned: one item or a list) as a tuple of one kind,
    once every :class:`Invariant` holds on it. ``context`` is the call's: the view it ran on
    (``context.frame``), the original image (``context.root``) and the encoder hub (features'
    layout, and their width as :func:`_feature_width` says; neither is checked without a hub).

    Raises :class:`~perceive.errors.ObservationError` whose ``invariant`` names the first breach."""
    expected = _TYPES.get(declared, Features)
    items = tuple(result) if isinstance(result, list | tuple) else (result,)
    if not items:
        raise _breach(Invariant.KIND, f"action {action!r} returned no observation")
    for item in items:
        if not isinstance(item, expected):
            raise _breach(Invariant.KIND, f"action {action!r} declares observation={declared!r} but returned "
                          f"{type(item).__name__}", hint=f"return perceive.{expected.__name__} objects from run()")
        if isinstance(item, View):
            _check_view(action, item, context)
        elif isinstance(item, Text):
            _check_text(action, item, context)
        else:
            _check_features(action, item, context)
    return items


def _breach(invariant: Invariant, message: str, hint: str | None = None) -> ObservationError:
    hint = hint or ("fix the action's run(): what it returns must hold every invariant "
                    "(docs/reference/errors.md#observation-invariants)")
    return ObservationError(message, hint=hint, invariant=invariant.value)


def _check_view(action: str, item: View, context: CallContext) -> None:
    W, H = context.root.size
    if not isinstance(item.image, Image.Image) or item.image.mode != "RGB":
        what = f"a {item.image.mode} image" if isinstance(item.image, Image.Image) else type(item.image).__name__
        raise _breach(Invariant.VIEW_RGB, f"action {action!r} returned {what}; views must be RGB PIL images")
    if not isinstance(item.frame, Frame) or item.image.size != item.frame.size:
        raise _breach(Invariant.VIEW_SIZE, f"action {action!r} returned a {item.image.size} image whose frame "
                      f"says {getattr(item.frame, 'size', item.frame)!r}")
    b = item.box
    if not (b.frame == ROOT and 0 <= b.x0 < b.x1 <= W and 0 <= b.y0 < b.y1 <= H):
        raise _breach(Invariant.VIEW_INSIDE, f"action {action!r} returned a view of {b.as_tuple()}, not inside the "
                      f"{W}x{H} original image", hint="cut views with context.crop_root(box), which clips to the image")
    if item.frame.parent != context.frame.id:
        raise _breach(Invariant.VIEW_PARENT, f"action {action!r} returned a view whose frame's parent is "
                      f"{item.frame.parent!r}, not {context.frame.id!r}, the view the call ran on")
    if not (math.isclose(float(item.frame.sx) * item.frame.width, b.width)
            and math.isclose(float(item.frame.sy) * item.frame.height, b.height)):
        raise _breach(Invariant.VIEW_SCALE, f"action {action!r} returned a view whose frame's scale "
                      f"({item.frame.sx}, {item.frame.sy}) times its size {item.frame.size} is not its box's size "
                      f"({b.width}, {b.height})")
    if item.frame.sx == 1 and item.frame.sy == 1:
        expect = as_rgb(context.root).crop(b.as_int_tuple())
        if ImageChops.difference(expect, item.image).getbbox() is not None:
            raise _breach(Invariant.VIEW_PIXELS, f"action {action!r} returned a 1:1 view of {b.as_tuple()}: a 1:1 "
                          "view must hold exactly the original's pixels under its box")


def _check_text(action: str, item: Text, context: CallContext) -> None:
    def bad(invariant: Invariant, what: str) -> ObservationError:
        return _breach(invariant, f"action {action!r} returned a Text whose {what}",
                       hint="Text(text: str, source: context.frame, boxes=((Box(..., frame='root'), str), ...))")

    W, H = context.root.size
    if not isinstance(item.text, str):
        raise bad(Invariant.TEXT_TYPES, f"text is a {type(item.text).__name__}, not a str")
    if not isinstance(item.boxes, tuple | list):
        raise bad(Invariant.TEXT_TYPES, f"boxes are a {type(item.boxes).__name__}, not a tuple of (Box, str) pairs")
    for pair in item.boxes:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], Box)
                and isinstance(pair[1], str)):
            raise bad(Invariant.TEXT_TYPES, f"boxes hold {pair!r}, not a (Box, str) pair")
    if item.source != context.frame:
        raise bad(Invariant.TEXT_SOURCE, f"source is view {getattr(item.source, 'id', item.source)!r}, not "
                  f"{context.frame.id!r}, the view the call ran on")
    region = item.box  # the region read, or the whole view
    if not (isinstance(region, Box) and region.frame == ROOT and 0 <= region.x0 <= region.x1 <= W
            and 0 <= region.y0 <= region.y1 <= H):
        raise bad(Invariant.TEXT_REGION, f"region {region!r} is not a Box in the root frame inside the {W}x{H} image")
    for box, words in item.boxes:
        if box.frame != ROOT:
            raise bad(Invariant.TEXT_BOXES, f"box {box.as_tuple()} is in frame {box.frame!r}: boxes are in the "
                      "original image's pixels (frame 'root'); map them with context.frame.to_root(box)")
        if not (region.x0 <= box.x0 <= box.x1 <= region.x1 and region.y0 <= box.y0 <= box.y1 <= region.y1):
            raise bad(Invariant.TEXT_BOXES, f"box {box.as_tuple()} ({words!r}) lies outside the region read "
                      f"{region.as_tuple()}")


def _feature_width(action: str, spec, hub) -> int | None:
    """How wide ``action``'s features must be: as wide as the run's model's branch of that name takes
    (its perceive.json ``feature_dim``: a branch trained from scratch may be narrower than the
    registered encoder), else the encoder's registered ``feature_dim``; None (unchecked) for the tiny
    random encoders of tests and the conformance kit."""
    if getattr(hub, "tiny", False):
        return None
    model = getattr(hub, "model", None)
    has = getattr(model, "has_branch", None)
    if has is not None and has(action):
        return int(model.branch_config(action).feature_dim)
    return spec.feature_dim


def _check_features(action: str, item: Features, context: CallContext) -> None:
    import torch

    t = item.tensor
    if not isinstance(t, torch.Tensor):
        raise _breach(Invariant.FEATURES_TENSOR, f"action {action!r} returned features that are a "
                      f"{type(t).__name__}, not a torch.Tensor")
    if not bool(torch.isfinite(t).all()):
        raise _breach(Invariant.FEATURES_FINITE, f"action {action!r} returned features that hold NaN or inf")
    hub = context.encoders
    specs = getattr(hub, "specs", None)
    if specs is not None:
        spec = specs.get(item.encoder)
        if spec is None:
            raise _breach(Invariant.FEATURES_LAYOUT, f"action {action!r} returned features of encoder "
                          f"{item.encoder!r}, which is not registered")
        ndim = 2 if spec.layout == "tokens" else 3
        if t.ndim != ndim:
            raise _breach(Invariant.FEATURES_LAYOUT, f"action {action!r} returned features of shape "
                          f"{tuple(t.shape)}: encoder {item.encoder!r}'s {spec.layout} layout has {ndim} dims")
        width, want = t.shape[0 if spec.layout == "map" else -1], _feature_width(action, spec, hub)
        if want is not None and width != want:
            raise _breach(Invariant.FEATURES_LAYOUT, f"action {action!r} returned features of shape "
                          f"{tuple(t.shape)}: encoder {item.encoder!r} gives {want}-wide features")
    if not (isinstance(item.num_placeholders, int) and item.num_placeholders > 0):
        raise _breach(Invariant.FEATURES_PLACEHOLDERS, f"action {action!r} returned features for "
                      f"{item.num_placeholders!r} placeholders: it must be a positive int")
    if item.source != context.frame:
        raise _breach(Invariant.FEATURES_SOURCE, f"action {action!r} returned features of view "
                      f"{getattr(item.source, 'id', item.source)!r}, not {context.frame.id!r}, the view the call "
                      "ran on")
