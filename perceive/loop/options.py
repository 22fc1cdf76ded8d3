"""The loop's settings: one pydantic model, built from a run config.

:class:`LoopOptions` is the run config's ``runtime:`` and ``sampling:`` sections
(:mod:`perceive.config.settings`, where each field and its default are defined) with the run's action
options and protocol; :data:`CONFIG_HOMES` says where a run config sets each field, and
:func:`options_from_config` reads them all.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from perceive.config.settings import AUTO_PROTOCOL, LoopRuntime, SamplingConfig


class LoopOptions(LoopRuntime, SamplingConfig):
    """Everything a perception loop reads of its run: the limits and switches of
    :class:`~perceive.config.settings.LoopRuntime` (``max_hops``, ``max_new_tokens``, ``target``,
    ``system``, ``max_batch_size``, ...), the sampling of :class:`~perceive.config.settings.SamplingConfig`
    (``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``seed``), and the fields below. An
    unknown or out-of-range value is a ``pydantic.ValidationError``: ``LoopOptions(max_hops=2)``."""

    #: per-action options (e.g. {"zoom": {"size": 448}}); config ``actions.<name>.options`` and ``.encoder``
    action_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: action names the parser recognises (None: every installed action); config ``actions.<name>.enabled``
    actions: list[str] | None = None
    #: the tool-call protocol the model speaks (a registered name: ``vpt``, ``hermes_json``,
    #: ``mini_o3_grounding``, or a plugin's) and its options; ``auto`` reads it from the model
    #: (perceive.protocols.detect). Config ``protocol.name`` and ``protocol.options``
    protocol: str = AUTO_PROTOCOL
    protocol_options: dict[str, Any] = Field(default_factory=dict)

    def replace(self, **changes: Any) -> LoopOptions:
        """A copy with ``changes``, validated (what ``dataclasses.replace`` gave when this was a
        dataclass): ``options.replace(max_hops=2)``."""
        return type(self).model_validate({**self.model_dump(), **changes})


#: where a run config sets each :class:`LoopOptions` field (``<name>``: any action's name);
#: ``tests/test_settings.py`` checks that every field has one
CONFIG_HOMES: dict[str, tuple[str, ...]] = {
    **{name: ("runtime", name) for name in LoopRuntime.model_fields},
    **{name: ("sampling", name) for name in SamplingConfig.model_fields},
    "action_options": ("actions", "<name>", "options"),
    "actions": ("actions", "<name>", "enabled"),
    "protocol": ("protocol", "name"),
    "protocol_options": ("protocol", "options"),
}


def options_from_config(cfg) -> LoopOptions:
    """The loop options a run config (:class:`perceive.config.PerceiveConfig`) sets: its
    ``runtime`` (less ``threads``, a process setting) and ``sampling`` sections, each action's
    ``options`` (with its ``encoder``), the enabled actions and the protocol."""
    action_options = {name: {**a.options, **({"encoder": a.encoder} if a.encoder else {})}
                      for name, a in (cfg.actions or {}).items()}
    return LoopOptions(**cfg.runtime.model_dump(include=set(LoopRuntime.model_fields)), **cfg.sampling.model_dump(),
                       action_options=action_options, actions=cfg.enabled_actions(), protocol=cfg.protocol.name,
                       protocol_options=dict(cfg.protocol.options))


__all__ = ["CONFIG_HOMES", "LoopOptions", "options_from_config"]
