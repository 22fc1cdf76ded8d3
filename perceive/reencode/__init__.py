"""Re-encoding, the paper's second token family (Vision Re-Encoding, vpt-paper.md §1.1, §2.5): a
features action re-encodes a view with a vision encoder, and the model's re-encode branch of the
same name projects those features, conditioned on the control hidden state, into the language model.

- :mod:`perceive.reencode.action`: :class:`ReencodeAction`, the base of a features action (its
  span's grammar, running its encoder on the target view);
- :mod:`perceive.reencode.branch_spec`: :class:`BranchSpec`, the model-side half a plugin registers
  (tokens, encoder module, projector, preprocessing, dataset and paper layout), and
  :class:`BranchArchitecture`, what a spec reads of a model's branch config;
- :mod:`perceive.reencode.branch_encoder`: :class:`ModelBranchEncoder`, an encoder that runs a
  loaded model's own trained branch;
- :mod:`perceive.reencode.projectors`: the projector building blocks (conditioning on the control
  state);
- :mod:`perceive.reencode.weights`: weight helpers (strict loading, legacy key renaming).

The model's branch modules (encoder and projector, built from the registered specs) are
:mod:`perceive.model.branch_modules`. Importing this package imports neither torch nor
transformers; ``projectors`` and ``weights`` do, so import them where a branch is built.
"""

from perceive.reencode.action import ReencodeAction, ReencodeArgs
from perceive.reencode.branch_encoder import ModelBranchEncoder, model_has_branch
from perceive.reencode.branch_spec import (
    BranchArchitecture,
    BranchInput,
    BranchSpec,
    BranchTokens,
    PaperLayout,
    branch_problems,
)

__all__ = ["BranchArchitecture", "BranchInput", "BranchSpec", "BranchTokens", "ModelBranchEncoder", "PaperLayout",
           "ReencodeAction", "ReencodeArgs", "branch_problems", "model_has_branch"]
