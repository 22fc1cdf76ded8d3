"""Plugin discovery and the registry of actions, encoders, re-encode branches and tool-call protocols.

Plugins arrive through the entry-point group ``perceive.plugins`` (the reference plugins
too), or are registered directly with :meth:`Registry.register`. Everything is validated at
load time: a plugin that fails to import, implements a hook that does not exist, returns a
malformed action, encoder or branch, or reuses a name another plugin owns is reported, with its
name and distribution, and left out. The other plugins load as usual.

Environment switches:

* ``PERCEIVE_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points.
* ``PERCEIVE_PLUGINS=a,b``: load only these entry points (by entry-point or distribution name).
* ``PERCEIVE_TRACE_PLUGINS=1``: log every hook call with its arguments and result.
* ``PERCEIVE_STRICT_PLUGINS=1``: a broken plugin is an error instead of a report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from perceive import hookspecs
from perceive.actions import Action, action_problems
from perceive.dispatch import CorePlugin
from perceive.encoders import EncoderSpec, encoder_problems
from perceive.errors import (
    ConfigError,
    PluginValidationError,
    UnknownActionError,
    UnknownEncoderError,
    closest,
    did_you_mean,
)
from perceive.protocols import ToolProtocol, builtin_protocols, protocol_problems
from perceive.reencode.branch_spec import BranchSpec, branch_problems
from perceive.rewards import Reward, reward_problems

ENTRY_POINT_GROUP = "perceive.plugins"
log = logging.getLogger(__name__)


@dataclass
class PluginInfo:
    """What the registry knows of one plugin, loaded or not."""

    name: str
    dist: str | None = None
    version: str | None = None
    module: str | None = None
    actions: list[str] = field(default_factory=list)
    encoders: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    rewards: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


@dataclass(frozen=True)
class Registered:
    """An action, encoder or branch with the plugin it came from."""

    obj: Any
    plugin: str
    dist: str | None
    version: str | None


class Registry:
    """Actions, encoders and re-encode branches from every loaded plugin, plus the pluggy manager
    that calls hooks."""

    def __init__(self, pm: pluggy.PluginManager | None = None):
        self.pm = pm or new_plugin_manager()
        self.plugins: dict[str, PluginInfo] = {}
        self.actions: dict[str, Registered] = {}
        self.encoders: dict[str, Registered] = {}
        self.branches: dict[str, Registered] = {}
        # the built-in tool-call protocols; plugins add theirs (perceive_register_protocols)
        self.protocols: dict[str, Registered] = {p.name: Registered(p, "perceive", None, None)
                                                 for p in builtin_protocols()}
        #: rewards plugins register (perceive_register_rewards); the built-ins are perceive.rl.rewards'
        self.rewards: dict[str, Registered] = {}
        self.problems: list[str] = []

    # -- lookup ---------------------------------------------------------------------------

    def action(self, name: str) -> Action:
        try:
            return self.actions[name].obj
        except KeyError:
            raise UnknownActionError(f"no perception action named {name!r}",
                                     hint=did_you_mean(name, self.actions)) from None

    def encoder(self, name: str) -> EncoderSpec:
        try:
            return self.encoders[name].obj
        except KeyError:
            raise UnknownEncoderError(f"no vision encoder named {name!r}",
                                      hint=did_you_mean(name, self.encoders)) from None

    def encoder_specs(self) -> dict[str, EncoderSpec]:
        return {n: r.obj for n, r in self.encoders.items()}

    def branch(self, name: str) -> BranchSpec:
        """The re-encode branch ``name`` (the features action it serves)."""
        try:
            return self.branches[name].obj
        except KeyError:
            raise UnknownActionError(f"no installed plugin provides a re-encode branch named {name!r}",
                                     hint=did_you_mean(name, self.branches)
                                     or "install the plugin that provides it (`perceive plugins list` shows what "
                                        "is installed)") from None

    def branch_specs(self) -> dict[str, BranchSpec]:
        """Every registered branch, by name, in registration order."""
        return {n: r.obj for n, r in self.branches.items()}

    def protocol(self, name: str, options: dict | None = None) -> ToolProtocol:
        """The tool-call protocol ``name``, configured with ``options`` (checked against its
        ``Options``; a wrong one raises :class:`ConfigError`)."""
        reg = self.protocols.get(name)
        if reg is None:
            raise ConfigError(f"no tool-call protocol named {name!r}",
                              hint=did_you_mean(name, self.protocols) or f"installed: {sorted(self.protocols)}")
        if not options:
            return reg.obj
        from pydantic import ValidationError

        try:
            return reg.obj.configure(options)
        except ValidationError as exc:
            lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            raise ConfigError("\n".join([f"protocol {name!r}: {len(lines)} invalid option(s)", *lines]),
                              hint="`perceive protocols list` shows each protocol's options") from None

    def select(self, names: Iterable[str] | None = None) -> list[Action]:
        """The enabled actions (all when ``names`` is None); unknown names raise."""
        if names is None:
            return [r.obj for r in self.actions.values()]
        return [self.action(n) for n in names]

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if not p.ok]

    def raise_for_broken(self) -> None:
        """Strict mode: raise :class:`PluginValidationError` for the first broken plugin."""
        for p in self.broken:
            raise PluginValidationError(p.name, p.dist, "; ".join(p.errors),
                                        hint="fix the plugin, or uninstall it; "
                                        "`perceive plugins list` shows every problem")

    # -- registration ---------------------------------------------------------------------

    def register(self, plugin: Any, name: str | None = None, *, dist: str | None = None,
                 version: str | None = None) -> PluginInfo:
        """Register a plugin object (a module or an instance with hookimpls) and validate it.

        Returns its :class:`PluginInfo`; check ``.ok`` / ``.errors``. Never raises for a
        plugin's fault.
        """
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        info = PluginInfo(name, dist, version, getattr(plugin, "__name__", type(plugin).__name__))
        self.plugins[name] = info
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            info.errors.append(f"hook implementation rejected: {exc}")
            return info
        info.hooks = sorted(hc.name for hc in self.pm.get_hookcallers(plugin) or ())
        known = [n for n in dir(self.pm.hook) if n.startswith("perceive_")]
        for hc in self.pm.get_hookcallers(plugin) or ():
            if not hc.has_spec():
                hint = did_you_mean(hc.name, [k for k in known if self.pm.hook.__dict__[k].has_spec()])
                info.errors.append(f"implements unknown hook {hc.name!r}" + (f"; {hint}" if hint else ""))
        if not info.errors:
            actions = self._collect(plugin, "perceive_register_actions", action_problems, info)
            encoders = self._collect(plugin, "perceive_register_encoders", encoder_problems, info)
            branches = self._collect(plugin, "perceive_register_branches", branch_problems, info)
            protocols = self._collect(plugin, "perceive_register_protocols", protocol_problems, info)
            rewards: list[Reward] = self._collect(plugin, "perceive_register_rewards", reward_problems, info)
            self._check_unique("reward", rewards, self.rewards, info)
            self._check_names(actions, encoders, info)
            self._check_protocols(protocols, info)
            self._check_branches(branches, actions, info)
        if info.errors:
            self.pm.unregister(plugin)
            info.hooks = []
            return info
        # one registry per extensible concept, each filled the same way
        for table, listed, objs in ((self.actions, info.actions, actions), (self.encoders, info.encoders, encoders),
                                    (self.branches, info.branches, branches),
                                    (self.protocols, info.protocols, protocols),
                                    (self.rewards, info.rewards, rewards)):
            for obj in objs:
                table[obj.name] = Registered(obj, name, dist, version)
                listed.append(obj.name)
        return info

    def _check_protocols(self, protocols: list[ToolProtocol], info: PluginInfo) -> None:
        self._check_unique("protocol", protocols, self.protocols, info)

    @staticmethod
    def _check_unique(kind: str, objs, table: dict, info: PluginInfo) -> None:
        """Each of ``objs`` has a name no installed plugin (``table``) nor an earlier one of them has."""
        seen: set[str] = set()
        for o in objs:
            if o.name in table or o.name in seen:
                owner = table[o.name].plugin if o.name in table else info.name
                info.errors.append(f"duplicate {kind} name {o.name!r}: already provided by plugin {owner!r}")
            seen.add(o.name)

    def _collect(self, plugin, hook_name: str, check, info: PluginInfo) -> list:
        out: list = []
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                result = impl.function()
            except Exception as exc:
                info.errors.append(f"{hook_name}() raised {type(exc).__name__}: {exc}")
                continue
            if result is None:
                continue
            if not isinstance(result, list | tuple):
                info.errors.append(f"{hook_name}() must return a list, got {type(result).__name__}")
                continue
            for obj in result:
                problems = check(obj)
                label = getattr(obj, "name", repr(obj))
                info.errors += [f"{hook_name}: {label!r}: {p}" for p in problems]
                if not problems:
                    out.append(obj)
        return out

    def _check_names(self, actions: list[Action], encoders: list[EncoderSpec], info: PluginInfo):
        starts = {r.obj.grammar.start: n for n, r in self.actions.items()}
        seen: set[str] = set()
        for a in actions:
            if a.name in self.actions or a.name in seen:
                owner = self.actions[a.name].plugin if a.name in self.actions else info.name
                info.errors.append(f"duplicate action name {a.name!r}: already provided by "
                                   f"plugin {owner!r}")
            elif a.grammar.start in starts:
                info.errors.append(f"action {a.name!r} uses start token {a.grammar.start} which "
                                   f"action {starts[a.grammar.start]!r} already owns")
            seen.add(a.name)
            starts[a.grammar.start] = a.name
        self._check_unique("encoder", encoders, self.encoders, info)

    def _check_branches(self, branches: list[BranchSpec], actions: list[Action], info: PluginInfo) -> None:
        """Branch names and tokens are unique; a features action of the same name in the plugin
        opens and closes its span with the branch's tokens."""
        owned = {t: n for n, r in self.branches.items() for t in r.obj.tokens.all}
        mine = {a.name: a for a in actions}
        self._check_unique("branch", branches, self.branches, info)
        for b in branches:
            for t in b.tokens.all:
                if t in owned:
                    info.errors.append(f"branch {b.name!r} uses token {t} which branch {owned[t]!r} already owns")
                owned[t] = b.name
            a = mine.get(b.name)
            if a is not None and (a.observation != "features" or a.grammar.start != b.tokens.start
                                  or a.grammar.end != b.tokens.end):
                info.errors.append(f"action {b.name!r} and its branch disagree: the action must be a features "
                                   f"action whose span is {b.tokens.start} ... {b.tokens.end}")

    def load_entry_points(self, only: Iterable[str] | None = None) -> None:
        """Load every plugin of the ``perceive.plugins`` entry-point group (or only some)."""
        wanted = {w.strip() for w in only if w.strip()} if only is not None else None
        found: set[str] = set()
        eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        for ep in eps:
            dist = ep.dist.metadata["Name"] if ep.dist else None
            version = ep.dist.version if ep.dist else None
            if wanted is not None and not ({ep.name, dist} & wanted):
                continue
            found |= {ep.name, dist}
            if ep.name in self.plugins:
                continue
            try:
                module = ep.load()
            except Exception as exc:
                info = PluginInfo(ep.name, dist, version, ep.value)
                info.errors.append(f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}")
                self.plugins[ep.name] = info
                continue
            self.register(module, ep.name, dist=dist, version=version)
        for w in sorted((wanted or set()) - found):
            hint = did_you_mean(w, [e.name for e in eps])
            self.problems.append(f"PERCEIVE_PLUGINS names {w!r}, which is not installed"
                                 + (f" ({hint})" if hint else ""))

    def to_json(self) -> dict[str, Any]:
        def entry(name: str, r: Registered, kind: str) -> dict[str, Any]:
            d = {"name": name, "plugin": r.plugin, "distribution": r.dist, "version": r.version}
            if kind == "branch":
                b: BranchSpec = r.obj
                d |= {"description": b.description, "tokens": list(b.tokens.all), "encoder": b.encoder,
                      "placeholder": b.message_placeholder, "dataset_key": b.images_key,
                      "paper": None if b.paper is None else {"family": b.paper.family,
                                                             "encoder_ls": b.paper.encoder_ls}}
            elif kind == "action":
                a: Action = r.obj
                d |= {"description": a.description, "observation": a.observation,
                      "start": a.grammar.start, "end": a.grammar.end,
                      "inner": list(a.grammar.inner), "encoders": list(a.encoders)}
            else:
                e: EncoderSpec = r.obj
                d |= {"family": e.family, "layout": e.layout, "feature_dim": e.feature_dim,
                      "placeholders": e.placeholders, "requires_model": e.requires_model,
                      "description": e.description}
            return d

        return {
            "actions": [entry(n, r, "action") for n, r in sorted(self.actions.items())],
            "encoders": [entry(n, r, "encoder") for n, r in sorted(self.encoders.items())],
            "branches": [entry(n, r, "branch") for n, r in sorted(self.branches.items())],
            "protocols": [{"name": n, "plugin": r.plugin, "distribution": r.dist, "version": r.version,
                           "description": r.obj.description} for n, r in sorted(self.protocols.items())],
            "rewards": [{"name": n, "plugin": r.plugin, "distribution": r.dist, "version": r.version,
                         "description": r.obj.description} for n, r in sorted(self.rewards.items())],
            "plugins": [p.to_dict() for _, p in sorted(self.plugins.items())],
            "problems": list(self.problems),
        }


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(CorePlugin(), name="perceive.core")
    if os.environ.get("PERCEIVE_TRACE_PLUGINS"):
        def before(hook_name, impls, kwargs):
            log.warning("hook %s(%s) -> %s", hook_name, ", ".join(kwargs),
                        [i.plugin_name for i in impls])

        def after(outcome, hook_name, impls, kwargs):
            log.warning("hook %s returned %r", hook_name, outcome.get_result()
                        if outcome.exception is None else outcome.exception)

        pm.add_hookcall_monitoring(before, after)
    return pm


def load_registry(plugins: Iterable[Any] = (), *, autoload: bool | None = None,
                  only: Iterable[str] | None = None) -> Registry:
    """A fresh registry: entry-point plugins (subject to the environment switches) and then
    ``plugins`` (objects, or ``(name, object)`` pairs)."""
    reg = Registry()
    if autoload is None:
        autoload = not os.environ.get("PERCEIVE_DISABLE_PLUGIN_AUTOLOAD")
    if only is None and os.environ.get("PERCEIVE_PLUGINS"):
        only = os.environ["PERCEIVE_PLUGINS"].split(",")
    if autoload:
        reg.load_entry_points(only)
    for p in plugins:
        name, obj = p if isinstance(p, tuple) else (None, p)
        reg.register(obj, name)
    if os.environ.get("PERCEIVE_STRICT_PLUGINS"):
        reg.raise_for_broken()
    return reg


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _default
    if _default is None:
        _default = load_registry()
    return _default


def reset_registry() -> None:
    global _default
    _default = None


__all__ = ["ENTRY_POINT_GROUP", "PluginInfo", "Registered", "Registry", "closest",
           "get_registry", "load_registry", "reset_registry"]
