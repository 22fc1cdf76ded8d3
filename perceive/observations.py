"""What a perception action returns.

Three kinds: the paper's two token families, and text:

* :class:`View`: a new image (a crop, a zoom, a tile) to be encoded by the MLLM's own vision
  tower and shown as a new image turn. Its :class:`~perceive.geometry.Frame` maps its pixels
  back to the original image exactly.
* :class:`Features`: embeddings computed by a vision encoder, to be injected at placeholder
  tokens after the model's projector conditions them on the control hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from perceive.geometry import Box, Frame

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
