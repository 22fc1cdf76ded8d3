"""Weight helpers for re-encode branches: strict loading, the transformers renaming of legacy
keys, and reading an encoder's config file beside a checkpoint. Part of the plugin API
(:meth:`perceive.BranchSpec.load_encoder_weights`, :meth:`~perceive.BranchSpec.paper_config`,
:meth:`~perceive.BranchSpec.convert_paper_weights` use them); torch and transformers are imported
inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perceive.errors import ModelLoadError

if TYPE_CHECKING:
    import torch


def strict_load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                allow_missing: set[str] = frozenset()) -> None:
    """Load ``state``; any missing or unexpected key is a :class:`ModelLoadError` listing them
    (the reference silently kept random weights instead)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of other shapes: torch raises even when not strict
        sizes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        shown = "; ".join(sizes[:4]) + (f" ... (+{len(sizes) - 4})" if len(sizes) > 4 else "")
        raise ModelLoadError(f"{source} does not match the model: {len(sizes)} tensor(s) of other shapes"
                             + (f" [{shown}]" if shown else f": {exc}"),
                             hint="the weights and the config that describes them (perceive.json, config.json) "
                                  "must come from the same model; nothing was loaded partially") from None
    missing = [k for k in result.missing_keys if k not in allow_missing]
    if missing or result.unexpected_keys:
        def show(keys):
            return ", ".join(keys[:12]) + (f" ... (+{len(keys) - 12})" if len(keys) > 12 else "")

        raise ModelLoadError(
            f"{source} does not match the model: {len(missing)} missing keys [{show(missing)}], "
            f"{len(result.unexpected_keys)} unexpected keys [{show(result.unexpected_keys)}]",
            hint="check that the checkpoint and its config belong together; nothing was loaded partially",
        )


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("transformers_version", "architectures", "model_type",
                                                      "_name_or_path", "torch_dtype", "dtype")}


def read_config_file(file: Path) -> dict[str, Any]:
    """A transformers config JSON beside a paper checkpoint (an encoder's architecture), without
    its bookkeeping fields (versions, architectures, dtype)."""
    return _clean(json.loads(Path(file).read_text()))




def library_rename(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy keys the way transformers' ``from_pretrained`` does for ``module``
    (e.g. Qwen2-VL ``model.*`` -> ``model.language_model.*``, or a vision model's legacy
    ``attention.attention.query`` -> ``attention.q_proj``), using the library's own conversion mapping."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(module)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    out = {}
    for k, v in state.items():
        new, pattern = rename_source_key(k, renamings, converters)
        if pattern is not None:  # a tensor-changing conversion: not expected for these models
            raise ModelLoadError(f"key {k!r} needs a weight conversion perceive does not apply")
        out[new] = v
    return out


__all__ = ["library_rename", "read_config_file", "strict_load"]
