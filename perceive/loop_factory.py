"""The loop a run config describes: local (a model folder) or remote (an endpoint)."""

from __future__ import annotations

from perceive.errors import ConfigError


def loop_from_config(cfg, registry=None, graph=None, policy=None, model=None):
    """A :class:`~perceive.remote.RemoteLoop` when the run config (:class:`perceive.config.PerceiveConfig`)
    names a ``remote`` endpoint, else the local :meth:`PerceptionLoop.from_config
    <perceive.loop.PerceptionLoop.from_config>`. Both emit the same events and answers."""
    from perceive.loop import PerceptionLoop, options_from_config
    from perceive.plugins import get_registry
    from perceive.remote import RemoteLoop

    if cfg.remote is None:
        return PerceptionLoop.from_config(cfg, registry=registry, policy=policy, model=model, graph=graph)
    if policy is not None:
        raise ConfigError("scripted or oracle spans need a local model, not remote.url",
                          hint="drop --oracle-spans, or run the model locally")
    registry = registry or get_registry()
    cfg.refuse(cfg.check_names(registry))
    return RemoteLoop(cfg.remote, registry=registry, options=options_from_config(cfg), graph=graph,
                      params=cfg.graph_params(), encoder_configs=cfg.encoder_configs(), graph_name=cfg.graph,
                      graph_params=cfg.params)
