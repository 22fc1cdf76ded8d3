"""Re-encode branches: what a features action needs from the model.

A features action (one whose observation is :class:`~perceive.Features`) computes raw encoder
features of a view; the *model* turns them into rows it can read, conditioned on the control
hidden state, and places them at the action's pad tokens. The model-side half of that contract
is a :class:`BranchSpec`, which a plugin registers through ``perceive_register_branches``:

* its **tokens** (:class:`BranchTokens`: span start, the middle action token, span end, and the
  pad token the features fill);
* how to **build its encoder module** from the architecture stored in a model's
  ``perceive.json`` (random weights: a checkpoint brings the trained ones), or ``None`` when it
  reuses the MLLM's own vision tower;
* its **preprocessing** of a training image (the collator calls it) and the number of
  placeholders that gives;
* how to **encode** preprocessed images with that module, and its **projector** (how to build
  it and how to call it with features and the control vector);
* its **dataset layout** (the message placeholder, e.g. ``<sobel_image>``, and the item key
  that lists those images, e.g. ``sobel_images``);
* optionally its **paper layout** (:class:`PaperLayout`: the key prefixes of its weights and the
  ``config.json`` fields of the paper's released checkpoints), and small and default encoder
  configs for tests and ``model.add_branches``.

The model (:class:`perceive.VPTModel`), the collator, the paper converter, the training config
and the test models only ever iterate over the registered specs: a branch a third-party plugin
registers is trained, saved, loaded and run exactly like the reference ones. At inference a
branch's encoder runs through :class:`~perceive.reencode.branch_encoder.ModelBranchEncoder`.

This module imports neither torch nor transformers; a spec imports what it needs inside its
methods, so plugin discovery stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

_SPECIAL = re.compile(r"<\|[^|<>\s]+\|>")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_PLACEHOLDER = re.compile(r"<[a-z][a-z0-9_]*>")
_PARTS = ("encoder", "projector")


@dataclass(frozen=True)
class BranchTokens:
    """The four tokens of a re-encode branch: the span ``start``, the middle ``action`` token
    (its embedding is replaced by the control state; the paper never supervises it), the span
    ``end``, and the ``pad`` token the projected features are placed at (a special token)."""

    start: str
    action: str
    end: str
    pad: str

    @classmethod
    def named(cls, prefix: str) -> BranchTokens:
        """The paper's naming: ``<|P_action_start|> <|P_action|> <|P_action_end|>`` and the pad
        ``<|P_image_pad|>`` for a prefix ``P``."""
        return cls(f"<|{prefix}_action_start|>", f"<|{prefix}_action|>", f"<|{prefix}_action_end|>",
                   f"<|{prefix}_image_pad|>")

    @property
    def all(self) -> tuple[str, str, str, str]:
        """``(start, action, end, pad)``."""
        return (self.start, self.action, self.end, self.pad)

    @property
    def span(self) -> tuple[str, str, str]:
        """The ordinary (non-special) tokens: ``(start, action, end)``."""
        return (self.start, self.action, self.end)


class BranchArchitecture(Protocol):
    """What a spec reads of one model's branch: the architecture fields of its entry in the
    model's ``perceive.json`` ``branches`` (the model's :class:`perceive.model.BranchConfig` has
    them). A protocol, read-only, so that the plugin API depends on no model internals.

    ``encoder``: the registered encoder the branch was trained with. ``encoder_config``: the
    encoder module's architecture as the spec reads it (None: no module of its own, or none
    stored). ``feature_dim``: C, the width of the encoder's features the projector takes.
    ``image_size``: the encoder's input side in pixels (None: the spec's default)."""

    @property
    def encoder(self) -> str: ...
    @property
    def encoder_config(self) -> dict[str, Any] | None: ...
    @property
    def feature_dim(self) -> int: ...
    @property
    def image_size(self) -> int | None: ...


@dataclass(frozen=True)
class PaperLayout:
    """How a branch appears in the paper's released checkpoints (vpt-paper.md §2.2, §2.3).

    ``family``: the prefix of its ``config.json`` fields (``{family}_action_start_id``,
    ``{family}_action_id``, ``{family}_image_token_id``). ``encoder_ls``: its name in the config's
    ``vision_encoder_ls`` list. ``weights``: paper key prefix -> the branch part (``"encoder"`` or
    ``"projector"``) its keys belong to. ``inputs``: the reference forward's keyword for its extra
    images -> the key of that tensor in the branch's inputs (``{"x_images": "pixel_values"}``)."""

    family: str
    encoder_ls: str
    weights: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)

    def config_fields(self) -> tuple[str, str, str]:
        """The ``config.json`` fields of its start, action and pad token ids."""
        f = self.family
        return (f"{f}_action_start_id", f"{f}_action_id", f"{f}_image_token_id")


@dataclass
class BranchInput:
    """One extra image, preprocessed for a branch: ``tensors`` are what its :meth:`BranchSpec.encode`
    takes (each with a leading dimension of one image, or of one image's patches), and
    ``placeholders`` how many pad tokens its projected features fill."""

    tensors: dict[str, Any]
    placeholders: int


class BranchSpec:
    """The model-side half of a features action. Subclass it, set the class attributes, implement
    :meth:`build_encoder`, :meth:`build_projector`, :meth:`preprocess` and :meth:`encode`, and
    return an instance from ``perceive_register_branches``.

    ``name`` is the features action the branch serves (the same name: the loop looks the branch
    up by the action whose span closed) and its key in a model's ``perceive.json`` ``branches``
    and weights (``<name>.encoder.*``, ``<name>.projector.*``). ``encoder``: the registered
    encoder (``perceive_register_encoders``) whose ``build(model=...)`` runs the model's own
    branch at inference; :class:`ModelBranchEncoder` does that for any branch.
    """

    name: ClassVar[str] = ""
    tokens: ClassVar[BranchTokens]
    #: the registered encoder a new branch records (``BranchConfig.encoder``)
    encoder: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: the message placeholder of its extra images in a dataset (default ``<NAME_image>``)
    placeholder: ClassVar[str | None] = None
    #: the dataset item key that lists those images (default ``NAME_images``)
    dataset_key: ClassVar[str | None] = None
    #: how it appears in the paper's checkpoints; None: it does not
    paper: ClassVar[PaperLayout | None] = None

    # -- dataset layout -------------------------------------------------------------------

    @property
    def message_placeholder(self) -> str:
        return self.placeholder or f"<{self.name}_image>"

    @property
    def images_key(self) -> str:
        return self.dataset_key or f"{self.name}_images"

    # -- configuration --------------------------------------------------------------------

    def tiny_config(self, hidden_size: int) -> dict[str, Any]:
        """``BranchConfig`` fields (``encoder``, ``encoder_config``, ``feature_dim``,
        ``image_size``) of a small random branch: tests and ``model.add_branches`` without sizes.
        ``hidden_size``: the language model's width."""
        return {"encoder": self.encoder, "encoder_config": None, "feature_dim": hidden_size, "image_size": None}

    def encoder_config_for(self, encoder: str) -> dict[str, Any] | None:
        """The architecture of a registered encoder ``encoder`` (a full-size default, for
        checkpoints that do not store one); None: unknown."""
        return None

    def feature_dim(self, encoder_config: dict[str, Any] | None, hidden_size: int) -> int:
        """The width of the encoder's features (the projector's input) for ``encoder_config``."""
        return hidden_size

    def placeholders(self, config: BranchArchitecture) -> int | None:
        """How many pad tokens one image's features fill for this branch's config; None when it
        depends on the image (then :meth:`preprocess` says)."""
        return None

    # -- modules --------------------------------------------------------------------------

    def build_encoder(self, config: BranchArchitecture) -> nn.Module | None:
        """A randomly initialised encoder module of ``config``'s architecture
        (``config.encoder_config``); None when the branch reuses the MLLM's own vision tower."""
        raise NotImplementedError

    def build_projector(self, config: BranchArchitecture, hidden_size: int, scale: int = 1) -> nn.Module:
        """A randomly initialised projector from ``config.feature_dim`` features to
        ``hidden_size`` rows, conditioned on a ``hidden_size * scale`` control vector.
        :class:`perceive.reencode.projectors.TokenProjector` fits ``(N, T, C)`` token features."""
        raise NotImplementedError

    def load_encoder_weights(self, encoder: nn.Module, weights: str) -> None:
        """Load the encoder's weights from a local file or folder into ``encoder`` (strictly)."""
        raise ValueError(f"the {self.name} branch has no separate encoder weights to load")

    # -- data -----------------------------------------------------------------------------

    def preprocess(self, image: Image.Image, config: BranchArchitecture, model: Any) -> BranchInput:
        """One RGB training image -> the tensors :meth:`encode` takes, and the number of pad
        tokens it gives. ``model`` is the :class:`~perceive.VPTModel` (its processors, its
        ``spatial_merge_size``)."""
        raise NotImplementedError

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Several :attr:`BranchInput.tensors` -> one batch (default: concatenated key by key)."""
        import torch

        return {k: torch.cat([it[k] for it in items]) for k in items[0]}

    # -- forward --------------------------------------------------------------------------

    def encode(self, encoder: nn.Module | None, inputs: dict[str, Any], model: Any
               ) -> tuple[torch.Tensor, list[int] | None]:
        """Raw features of a batch of preprocessed images: ``(features, sizes)``. ``sizes``: the
        rows each image gives, when the layout does not say (None otherwise)."""
        raise NotImplementedError

    def project(self, projector: nn.Module, features: torch.Tensor, control: torch.Tensor | None,
                sizes: list[int] | None = None) -> torch.Tensor:
        """Projected rows ``(total placeholders, d)`` of ``features`` (as :meth:`encode` gives
        them), conditioned on ``control`` ``(N, d * scale)`` (one row per image) or not (None)."""
        return projector(features, control)

    def one_image(self, features: torch.Tensor) -> tuple[torch.Tensor, list[int] | None]:
        """The features of one image as an encoder returns them (``Features.tensor``) -> a batch
        of one, as :meth:`encode` would give it (default: a leading dimension of 1)."""
        return features.unsqueeze(0), None

    def first_image(self, features: torch.Tensor, sizes: list[int] | None) -> torch.Tensor:
        """The inverse of :meth:`one_image`: a batch of one -> that image's features."""
        return features[0]

    # -- the paper's checkpoints ----------------------------------------------------------

    def paper_config(self, folder: Any, raw: dict[str, Any], hidden_size: int) -> dict[str, Any]:
        """``BranchConfig`` fields (``encoder``, ``encoder_config``, ``feature_dim``,
        ``image_size``) of this branch in a paper checkpoint folder (``raw``: its config.json)."""
        return {"encoder": self.encoder, "encoder_config": None, "feature_dim": hidden_size, "image_size": None}

    def convert_paper_weights(self, part: str, state: dict[str, Any], module: nn.Module | None) -> dict[str, Any]:
        """Paper keys of one branch ``part`` (``"encoder"`` or ``"projector"``, prefix removed) ->
        keys of ``module`` (that part of the model's branch; default: unchanged)."""
        return state

    def __repr__(self) -> str:
        return f"<BranchSpec {self.name!r}>"


def _overrides(spec: BranchSpec, method: str) -> bool:
    return getattr(type(spec), method) is not getattr(BranchSpec, method)


def branch_problems(spec: Any) -> list[str]:
    """Everything wrong with a branch spec's declaration (empty list when well formed)."""
    if not isinstance(spec, BranchSpec):
        return [f"{spec!r} is not a perceive.BranchSpec instance"]
    problems = []
    if not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name or ""):
        problems.append(f"name {spec.name!r} must match [a-z][a-z0-9_]*")
    tokens = getattr(spec, "tokens", None)
    if not isinstance(tokens, BranchTokens):
        problems.append(f"tokens must be a perceive.BranchTokens, got {type(tokens).__name__}")
    else:
        bad = [t for t in tokens.all if not isinstance(t, str) or not _SPECIAL.fullmatch(t)]
        if bad:
            problems.append(f"tokens {bad} are not special-token literals like '<|name|>'")
        elif len(set(tokens.all)) != 4:
            problems.append(f"the four tokens must differ, got {list(tokens.all)}")
    if not isinstance(spec.encoder, str) or not spec.encoder:
        problems.append("encoder must name the registered encoder the branch runs with")
    if not _PLACEHOLDER.fullmatch(spec.message_placeholder or "") or spec.message_placeholder == "<image>":
        problems.append(f"placeholder {spec.message_placeholder!r} must look like '<name_image>' (not '<image>')")
    if not _NAME.fullmatch(spec.images_key or "") or spec.images_key == "images":
        problems.append(f"dataset_key {spec.images_key!r} must match [a-z][a-z0-9_]* (not 'images')")
    for method in ("build_encoder", "build_projector", "preprocess", "encode"):
        if not _overrides(spec, method):
            problems.append(f"{method}() is not implemented")
    paper = spec.paper
    if paper is not None:
        if not isinstance(paper, PaperLayout):
            problems.append(f"paper must be a PaperLayout or None, got {type(paper).__name__}")
        elif not _NAME.fullmatch(paper.family or "") or not _NAME.fullmatch(paper.encoder_ls or ""):
            problems.append("paper.family and paper.encoder_ls must match [a-z][a-z0-9_]*")
        elif any(p not in _PARTS for p in paper.weights.values()):
            problems.append(f"paper.weights parts must be one of {_PARTS}")
    return problems


__all__ = ["BranchArchitecture", "BranchInput", "BranchSpec", "BranchTokens", "PaperLayout", "branch_problems"]
