"""The VPT model: a stock Qwen2-VL / Qwen2.5-VL plus perception branches."""

from perceive.model.checkpoint import convert, load_model, save_model
from perceive.model.config import BranchConfig, RegionConfig, SpecialIds, VPTConfig
from perceive.model.vpt import VPTModel, VPTOutput

__all__ = ["BranchConfig", "RegionConfig", "SpecialIds", "VPTConfig", "VPTModel", "VPTOutput", "convert",
           "load_model", "save_model"]
