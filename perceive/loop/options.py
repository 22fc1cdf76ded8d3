"""A run's options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class LoopOptions:
    max_hops: int = 4
    max_new_tokens: int = 256
    #: after a malformed span: keep generating, or finish the sample
    on_malformed: Literal["continue", "stop"] = "continue"
    #: reference-style baseline: prefill the whole conversation again after each observation
    reprefill: bool = False
    #: False: never dispatch (generation as the reference's offline first round does)
    dispatch: bool = True
    #: which view a span's coordinates refer to: the latest view shown, or the original image
    target: Literal["latest", "root"] = "latest"
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    system: str | None = None
    #: per-action options (e.g. {"zoom": {"size": 448}})
    action_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: action names the parser recognises (None: every installed action)
    actions: list[str] | None = None
    record_logits: bool = False
    #: deadline of one perception call in seconds (None: none); a call past it fails its sample
    #: with ``action_timeout`` (see perceive.dispatch for what happens to its thread)
    action_timeout_s: float | None = 120.0
    #: samples in the running batch at once (None: all); the others join as samples finish
    max_batch_size: int | None = None
    #: the tool-call protocol the model speaks (a registered name: ``vpt``, ``hermes_json``,
    #: ``mini_o3_grounding``, or a plugin's) and its options; ``auto``, as in a run config, reads it
    #: from the model (perceive.protocols.detect)
    protocol: str = "auto"
    protocol_options: dict[str, Any] = field(default_factory=dict)


def options_from_config(cfg) -> LoopOptions:
    """The loop options a run config (:class:`perceive.config.PerceiveConfig`) sets."""
    action_options = {name: {**a.options, **({"encoder": a.encoder} if a.encoder else {})}
                      for name, a in (cfg.actions or {}).items()}
    rt = cfg.runtime
    return LoopOptions(max_hops=rt.max_hops, max_new_tokens=rt.max_new_tokens, on_malformed=rt.on_malformed,
                       action_options=action_options, actions=cfg.enabled_actions(),
                       action_timeout_s=rt.action_timeout_s, reprefill=rt.reprefill, protocol=cfg.protocol.name,
                       protocol_options=dict(cfg.protocol.options))
