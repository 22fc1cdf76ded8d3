"""The modules of a model's re-encode branches, built by the plugin that registers each branch
(:class:`perceive.BranchSpec`) from the architecture stored in the model's ``perceive.json``
(weights come from the checkpoint, never a hub)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from perceive.errors import ModelLoadError
from perceive.model.config import BranchConfig

if TYPE_CHECKING:
    from perceive.plugins import Registry
    from perceive.reencode.branch_spec import BranchSpec


def branch_spec(branch: BranchConfig | str, registry: Registry | None = None) -> BranchSpec:
    """The registered spec of a branch, or a :class:`ModelLoadError` naming the plugin to install."""
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    name = branch if isinstance(branch, str) else branch.action
    if name in registry.branches:
        return registry.branches[name].obj
    plugin = None if isinstance(branch, str) else branch.plugin
    what = f"the plugin {plugin!r}" if plugin else "the plugin that provides it"
    raise ModelLoadError(
        f"the model carries a {name!r} re-encode branch, but no installed plugin registers a branch named {name!r}",
        hint=f"install {what} (a perceive plugin whose perceive_register_branches returns {name!r}) and load the "
             "model again; if it is installed, check `perceive plugins list` for a broken plugin, and that "
             "PERCEIVE_PLUGINS / PERCEIVE_DISABLE_PLUGIN_AUTOLOAD let it load")


def build_encoder(branch: BranchConfig, spec: BranchSpec | None = None) -> nn.Module | None:
    """A randomly initialised encoder module of the branch's architecture (None for a branch that
    reuses the MLLM's vision tower)."""
    return (spec or branch_spec(branch)).build_encoder(branch)


class Branch(nn.Module):
    """One re-encode branch: ``encoder`` (None when the branch has no module of its own) and
    ``projector``. Weights are saved under ``<name>.encoder.*`` and ``<name>.projector.*``."""

    def __init__(self, encoder: nn.Module | None, projector: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    @classmethod
    def build(cls, branch: BranchConfig, hidden_size: int, projector_scale: int = 1,
              spec: BranchSpec | None = None) -> Branch:
        """A randomly initialised branch of ``branch``'s architecture for a ``hidden_size`` LM."""
        spec = spec or branch_spec(branch)
        return cls(spec.build_encoder(branch), spec.build_projector(branch, hidden_size, projector_scale))


__all__ = ["Branch", "branch_spec", "build_encoder"]
