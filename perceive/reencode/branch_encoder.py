"""The encoder of a model's own re-encode branch: what a features plugin's registered encoder
returns when the loaded model carries its trained branch (its encoder weights and preprocessing),
so the action's features come from the branch the model was trained with.

This module imports neither torch nor transformers (the model does the work)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image


class ModelBranchEncoder:
    """A :class:`~perceive.encoders.VisionEncoder` that runs a loaded model's own branch (its
    trained encoder weights and its preprocessing): ``encode(image)`` is
    ``model.branch_features(branch, image)``. A plugin's encoder ``build(weights, options,
    model)`` returns one when no weights are given and the model carries the branch::

        def build(weights=None, options=None, model=None):
            if weights is None and model_has_branch(model, "sobel"):
                return ModelBranchEncoder(model, "sobel")
            ...  # else: a standalone encoder from local weights
    """

    def __init__(self, model: Any, branch: str):
        self.model = model
        self.branch = branch

    def encode(self, image: Image.Image) -> torch.Tensor:
        return self.model.branch_features(self.branch, image).float()


def model_has_branch(model: Any, name: str) -> bool:
    """Whether ``model`` is a VPT model that carries the re-encode branch ``name``."""
    has = getattr(model, "has_branch", None)
    return bool(has is not None and has(name))


__all__ = ["ModelBranchEncoder", "model_has_branch"]
