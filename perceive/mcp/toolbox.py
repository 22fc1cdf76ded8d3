"""What ``perceive mcp`` serves, independent of the MCP SDK: the tools (one per perception action whose
observation an agent can use, one per graph, and ``register_image``), and calling one.

The MCP layer (:mod:`perceive.mcp.server`) only translates: :meth:`Toolbox.tools` to the SDK's tool list,
:meth:`Toolbox.call` to a ``CallToolResult``. Every failure of a call is a :class:`ToolResult` with
``is_error`` and the CLI's message and hint; :meth:`Toolbox.call` never raises for a caller's mistake or a
plugin's fault.

Building a toolbox loads no model and imports no torch (an agent such as lmms-eval starts a server for
every call): the graph tools load the model on their first call, and only an action that names encoders
resolves the device ``auto`` (importing torch).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping
from typing import Any

from perceive.errors import ActionInputError, ConfigError, UnknownActionError, did_you_mean
from perceive.mcp.action_tools import SHOWABLE, ActionTool
from perceive.mcp.graph_tools import GraphTools
from perceive.mcp.images import ImageStore
from perceive.mcp.results import ImagePart, TextPart, ToolResult, ToolSpec, failure_of
from perceive.mcp.schemas import IMAGE, RESERVED, register_schema

log = logging.getLogger("perceive.mcp")
REGISTER = "register_image"
REGISTER_DOC = ("Register an image and get its id (img1) to name in the other tools, which also take a data URL "
                "or an allowed path directly. Every view a tool makes of it gets an id of its own (img1.v1) with "
                "its box in this image's pixels. The server keeps the most recently used images; an id let go "
                "is an error naming it: register the image again.")


class Toolbox:
    """The tools of one ``perceive mcp`` process, built from a run config (the file ``perceive ask``
    reads): which actions and graphs are exposed and with what options; the image store's limits.

    ``cfg``: a :class:`~perceive.config.PerceiveConfig` (its names are checked against ``registry``, as a
    run checks them: a wrong one is a :class:`~perceive.errors.ConfigError` here). ``registry``: where the
    actions come from (default: the process-wide :func:`perceive.plugins.get_registry`). The tools: each
    enabled action (``actions:``; unset: every installed one) whose observation is a view or text, under
    its own name; ``register_image``; one ``graph_<name>`` per graph of ``mcp.graphs``."""

    def __init__(self, cfg, registry=None):
        if registry is None:
            from perceive.plugins import get_registry

            registry = get_registry()
        cfg.refuse(cfg.check_names(registry))
        self.cfg, self.registry = cfg, registry
        self.store = ImageStore.from_config(cfg.mcp)
        self._hub: Any = None
        self._auto_device: str | None = None
        self._context_lock = threading.Lock()
        self.actions: dict[str, ActionTool] = {}
        for action in registry.select(cfg.enabled_actions()):
            if action.observation not in SHOWABLE:
                continue
            clash = [f for f in RESERVED if f in getattr(action.Args, "model_fields", {})]
            if action.name == REGISTER or clash:  # a plugin cannot take the server's own names
                log.warning("perceive mcp: action %s left out: its %s is the server's own", action.name,
                            f"argument {clash[0]!r}" if clash else "name")
                continue
            settings = (cfg.actions or {}).get(action.name)
            self.actions[action.name] = ActionTool(
                action, registry, self.store, options=settings.options if settings else {},
                agent_options=cfg.mcp.agent_options.get(action.name, ()), timeout_s=cfg.runtime.action_timeout_s,
                local_root=cfg.mcp.allow_local_images, context=functools.partial(self._context, action))
        self._check_agent_options()
        self.graphs = GraphTools(cfg, registry, self.store)
        for spec in self.graphs.specs():  # graph_<name> against an action (a plugin) of that name
            if spec.name in self.actions:
                if cfg.mcp.graphs is not None:
                    raise ConfigError(f"{cfg.source}: mcp.graphs serves the tool {spec.name!r}, and an installed "
                                      "action has that name", hint="leave that graph out of mcp.graphs, or rename "
                                                                   "the plugin's action")
                log.warning("perceive mcp: graph tool %s left out: an action has its name", spec.name)
        specs = [ToolSpec(REGISTER, REGISTER_DOC, register_schema()), *(t.spec for t in self.actions.values()),
                 *(s for s in self.graphs.specs() if s.name not in self.actions)]
        self._specs = {s.name: s for s in specs}

    def _check_agent_options(self) -> None:
        """A :class:`ConfigError` for an ``mcp.agent_options`` entry naming no served action or no option of
        it (an action without an ``Options`` model takes any name)."""
        for name, fields in self.cfg.mcp.agent_options.items():
            where = f"{self.cfg.source}: mcp.agent_options.{name}"
            if name not in self.actions:
                raise ConfigError(f"{where}: {name!r} is not an action this server serves",
                                  hint=did_you_mean(name, self.actions) or f"it serves {', '.join(self.actions)}")
            known = getattr(self.actions[name].action.Options, "model_fields", None)
            bad = [f for f in fields if known is not None and f not in known]
            if bad:
                raise ConfigError(f"{where}: {name} has no option {bad[0]!r}",
                                  hint=did_you_mean(bad[0], known) or f"its options: {', '.join(known) or 'none'}")

    def tools(self) -> list[ToolSpec]:
        """Every tool: ``register_image``, the action tools, the graph tools."""
        return list(self._specs.values())

    def is_graph(self, name: str) -> bool:
        """Whether ``name`` is a graph tool (its calls share one model: one runs at a time)."""
        return name in self._specs and name in self.graphs.graphs

    def call(self, name: str, arguments: dict[str, Any] | None) -> ToolResult:
        """Run the tool ``name`` (blocking: the server runs it in a worker thread). Never raises: a caller's
        mistake, a failing or hung plugin, and a bug alike are a :class:`ToolResult` with ``is_error``."""
        try:
            return self._call(name, arguments)
        except (Exception, SystemExit) as exc:  # a plugin's sys.exit in its Args is still one call's failure
            if not isinstance(exc, ActionInputError | UnknownActionError):
                log.debug("tool %s failed", name, exc_info=True)
            return failure_of(exc)

    # -- internals -------------------------------------------------------------------------------

    def _call(self, name: str, arguments: Any) -> ToolResult:
        if name not in self._specs:
            raise UnknownActionError(f"no tool named {name!r}",
                                     hint=did_you_mean(str(name), self._specs) or "tools/list lists the tools")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            raise ActionInputError(f"{name}: the arguments must be a JSON object, not {type(arguments).__name__}",
                                   hint="the tool's input schema (tools/list) gives its arguments")
        if name == REGISTER:
            return self._register(arguments)
        if name in self.actions:
            return self.actions[name].call(arguments)
        return self.graphs.call(name, arguments)

    def _register(self, arguments: Mapping[str, Any]) -> ToolResult:
        unknown = [k for k in arguments if k != IMAGE]
        if unknown or IMAGE not in arguments:
            raise ActionInputError(f"{REGISTER} takes one argument, `image`" + (
                f"; got {', '.join(map(repr, unknown))}" if unknown else ", which is missing"),
                hint="image: a data URL (data:image/png;base64,...), an allowed path, or MCP image content")
        entry, new = self.store.resolve(arguments[IMAGE], self.cfg.mcp.allow_local_images)
        w, h = entry.root.size
        said = "registered" if new else "already registered, as"
        return ToolResult([TextPart(f"{said} {entry.id}: {w}x{h} px. Name it as `image` in the other tools; the "
                                    f"views they make of it are {entry.id}.v1, {entry.id}.v2, ...")],
                          {"id": entry.id, "size": [w, h], "new": new})

    def _context(self, action) -> dict[str, Any]:
        """What ``action``'s calls' context shares: the encoder hub of the run's encoders (it builds each
        encoder on first use) and the device (``device``), made once, under a lock (calls run in several
        threads). ``auto`` is resolved (CUDA when there is one: importing torch, a second and more) only for
        an action that names encoders; one that names none has nothing to place on a device and gets cpu,
        so a server whose calls crop and zoom never imports torch (lmms-eval starts one per call)."""
        with self._context_lock:
            if self._hub is None:
                from perceive.encoders import EncoderHub

                self._hub = EncoderHub(self.registry.encoder_specs(), self.cfg.encoder_configs())
            device = self.cfg.device
            if device == "auto" and action.encoders:
                if self._auto_device is None:  # as the model loader picks (perceive.model's imports transformers)
                    import torch

                    self._auto_device = "cuda" if torch.cuda.is_available() else "cpu"
                device = self._auto_device
            return {"encoders": self._hub, "device": "cpu" if device == "auto" else device}


__all__ = ["REGISTER", "ImagePart", "TextPart", "ToolResult", "ToolSpec", "Toolbox"]
