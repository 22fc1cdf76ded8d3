"""Vision encoders a re-encode action can use: a name registry and one interface.

Plugins register :class:`EncoderSpec` objects through ``perceive_register_encoders``. An
:class:`EncoderHub` builds each configured encoder once (from a **local** weights path; nothing
is fetched from a hub) and caches its output per image: within one hub, an encoder never
encodes the same pixels twice.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from PIL import Image
from pydantic import BaseModel

from perceive.errors import EncoderUnavailableError, UnknownEncoderError, did_you_mean
from perceive.strict import option_problems, options_error

_NAME = re.compile(r"[a-z][a-z0-9_]*")


class FeatureLayout(str, Enum):
    """The shape of one image's features: what an encoder gives (``EncoderSpec.layout``) and what a
    re-encode action's projector takes (``ReencodeAction.layout``). A plain string (``"map"``) is
    accepted wherever a layout is set."""

    TOKENS = "tokens"  # (N, C): N feature rows of width C
    MAP = "map"  # (C, H, W): a C-channel map

    def __str__(self) -> str:  # "map" in messages, not "FeatureLayout.MAP"
        return self.value

    @property
    def shape(self) -> str:
        return "(N, C)" if self is FeatureLayout.TOKENS else "(C, H, W)"

    @property
    def noun(self) -> str:
        """``tokens`` / ``a map``: what an encoder "gives"."""
        return "tokens" if self is FeatureLayout.TOKENS else "a map"


def layout_mismatch(action: Any, encoder: str, gives: FeatureLayout | str,
                    specs: Mapping[str, EncoderSpec] | None = None) -> tuple[str, str]:
    """``(message, hint)`` for encoder ``encoder``, which gives ``gives`` features, refused by the
    features ``action`` (a :class:`~perceive.reencode.ReencodeAction`), whose projector takes its
    ``layout``. ``specs``: every registered encoder, to suggest only those of the action's own that
    fit (without it, they are assumed to fit).

    When the refused encoder is one of the action's own ``encoders`` (or none of them fits), the
    action's declaration is what disagrees, so the hint says how to set ``layout``; otherwise it
    names the action's encoders that fit."""
    takes, gives = FeatureLayout(action.layout), FeatureLayout(gives)
    message = f"action {action.name!r} takes {takes} features but encoder {encoder!r} gives {gives.noun}"
    own = list(action.encoders)
    fits = [e for e in own if e != encoder and (specs is None or (e in specs and specs[e].layout == takes))]
    if fits and encoder not in own:  # a config or graph chose a foreign encoder
        return message, f"use one of {fits}, which give {takes} features"
    whose = f"its encoder {encoder!r}" if encoder in own else f"its encoders {own}"
    return message, (f"{type(action).__name__}.layout ({takes}: its projector takes {takes.shape} features) "
                     f"disagrees with {whose}; if the projector takes {gives.shape}, set "
                     f"`layout = FeatureLayout.{gives.name}` (from perceive.encoders) on the class, else make "
                     f"the encoder give {takes.shape} and register it with layout={takes.value!r}")


class VisionEncoder(Protocol):
    """One built encoder. ``encode`` takes one RGB PIL image and returns its features:
    ``(N, C)`` for a token layout, ``(C, H, W)`` for a map layout, as its spec declares."""

    def encode(self, image: Image.Image) -> Any: ...


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder.

    ``build(weights, options, model)`` returns a :class:`VisionEncoder`. ``weights`` is a local
    path (``None`` if the config gives none); ``model`` is the loaded MLLM for encoders that
    reuse its parts (``requires_model``). ``build_tiny()`` returns a small random-weight
    instance of the same architecture, for tests and the conformance kit; optional.
    ``placeholders`` is how many pad tokens one image's features fill, which must be the rows
    the model's branch projector gives for them. ``None``: ``tensor.shape[0]`` of the features
    ``encode`` returns, whatever the layout: for ``(T, C)`` tokens that is T, one pad per row
    (right for a projector that gives a row per token, at any size); for a ``(C, H, W)`` map it
    is C, the channels, which is the projector's row count only by coincidence, so a map
    encoder gives an int (e.g. 256 for a 16x16 map). A count the projector does not give fails that call with
    an :class:`~perceive.errors.ObservationError`. ``Options`` is a pydantic model (``extra="forbid"``) of the
    ``options`` ``build`` reads, checked when a config is loaded and before ``build`` runs;
    ``None``: options reach ``build`` unchecked. ``layout``: the shape of one image's features
    (a :class:`FeatureLayout`; ``"tokens"`` or ``"map"`` are accepted).

    ``branch_options``: the options ``build`` still applies when, given no weights, it runs the
    loaded model's own trained branch (:class:`~perceive.reencode.ModelBranchEncoder`) instead of
    a standalone encoder. Any other option set then is refused when the run starts
    (:func:`branch_option_problems`): the branch runs as it was trained (perceive.json), and an
    option it would ignore must not look as if it applied.
    """

    name: str
    family: str
    layout: FeatureLayout
    feature_dim: int | None
    build: Callable[..., VisionEncoder]
    build_tiny: Callable[[], VisionEncoder] | None = None
    placeholders: int | None = None
    requires_model: bool = False
    description: str = ""
    Options: type[BaseModel] | None = None
    branch_options: tuple[str, ...] = ()

    def __post_init__(self):
        # "map" and FeatureLayout.MAP are the same layout; a value that is neither stays as given
        # for encoder_problems to report
        if self.layout in tuple(FeatureLayout):
            object.__setattr__(self, "layout", FeatureLayout(self.layout))


def encoder_problems(spec: Any) -> list[str]:
    if not isinstance(spec, EncoderSpec):
        return [f"{spec!r} is not a perceive.EncoderSpec"]
    problems = []
    if not _NAME.fullmatch(spec.name or ""):
        problems.append(f"encoder name {spec.name!r} must match [a-z][a-z0-9_]*")
    if not isinstance(spec.layout, FeatureLayout):
        problems.append(f"layout must be FeatureLayout.TOKENS ('tokens') or FeatureLayout.MAP ('map'), "
                        f"got {spec.layout!r}")
    if not callable(spec.build):
        problems.append("build must be callable")
    if spec.build_tiny is not None and not callable(spec.build_tiny):
        problems.append("build_tiny must be callable or None")
    if spec.Options is not None and not (isinstance(spec.Options, type) and issubclass(spec.Options, BaseModel)):
        problems.append("Options must be None or a pydantic BaseModel subclass")
    return problems


def validate_encoder_options(spec: EncoderSpec, options: Mapping[str, Any] | None,
                             source: str | None = None) -> dict[str, Any]:
    """``options`` checked against ``spec.Options``: the options given, coerced, for ``build``
    (a copy, unchecked, when the spec has no Options model). Raises
    :class:`~perceive.errors.ConfigError` naming the encoder and each bad field."""
    validated, problems = option_problems("encoder", spec.name, spec.Options, options)
    if problems:
        raise options_error("encoder", spec.name, spec.Options, problems, source)
    return validated


def trained_branch(encoder: str, branches: Mapping[str, Any], actions: Mapping[str, Any]) -> str | None:
    """The model's re-encode branch that runs ``encoder`` when it is given no weights, or ``None``.

    ``branches``: the model's (``VPTConfig.branches``, by action); ``actions``: the registered
    actions, by name. A branch runs the encoders of its features action (an encoder's ``build``
    returns the model's own branch when there are no weights: see
    :class:`~perceive.reencode.ModelBranchEncoder`) and the one it was trained with."""
    for name, branch in branches.items():
        if getattr(branch, "encoder", None) == encoder or encoder in getattr(actions.get(name), "encoders", ()):
            return name
    return None


def branch_option_problems(encoders: Sequence[Any], branches: Mapping[str, Any],
                           registry: Any) -> list[tuple[tuple, str]]:
    """``(location, why)`` for each configured encoder whose ``options`` the model's trained branch
    would silently ignore, located at ``("encoders", index, "options")``. ``encoders``: a run
    config's ``encoders`` (each with ``name``, ``weights``, ``options``); ``branches``: the model's
    (``VPTConfig.branches``); ``registry``: the plugins (:class:`perceive.plugins.Registry`).

    With local ``weights`` the encoder is built standalone and applies its options; without, it
    runs the branch (:func:`trained_branch`), which applies only the spec's ``branch_options``."""
    actions = {n: r.obj for n, r in registry.actions.items()}
    out = []
    for i, cfg in enumerate(encoders):
        spec, options = registry.encoder_specs().get(cfg.name), dict(cfg.options or {})
        branch = trained_branch(cfg.name, branches, actions) if spec is not None and options else None
        if branch is None or cfg.weights is not None:
            continue
        ignored = [k for k in options if k not in spec.branch_options]
        if ignored:
            applied = f"; of its options only {list(spec.branch_options)} apply then" if spec.branch_options else ""
            out.append((("encoders", i, "options"),
                        f"{', '.join(map(repr, ignored))} would be ignored: the model carries a trained {branch!r} "
                        f"branch, which runs encoder {cfg.name!r} as it was trained (perceive.json){applied}. Remove "
                        f"them, or give {cfg.name!r} local weights to run it standalone with these options"))
    return out


def image_key(image: Image.Image) -> str:
    """Content fingerprint of an image (mode, size and pixels)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


@dataclass
class EncoderHub:
    """Builds encoders on first use and caches their features per (encoder, image content).

    ``specs``: registry name -> spec. ``configs``: name -> ``{"weights": path, "options": {...}}``
    (from :class:`perceive.config.EncoderConfig`). ``tiny=True`` builds random tiny encoders
    (tests only). ``model``: the MLLM, for encoders with ``requires_model``.
    """

    specs: Mapping[str, EncoderSpec]
    configs: Mapping[str, Any] = field(default_factory=dict)
    model: Any = None
    tiny: bool = False
    _built: dict[str, VisionEncoder] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    stats: dict[str, CacheStats] = field(default_factory=dict)

    def spec(self, name: str) -> EncoderSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownEncoderError(f"no encoder named {name!r}",
                                      hint=did_you_mean(name, self.specs)) from None

    def get(self, name: str) -> VisionEncoder:
        if name not in self._built:
            spec = self.spec(name)
            if self.tiny:
                if spec.build_tiny is None:
                    raise EncoderUnavailableError(f"encoder {name!r} has no tiny build")
                self._built[name] = spec.build_tiny()
            else:
                cfg = self.configs.get(name)
                weights = getattr(cfg, "weights", None) if cfg is not None else None
                options = dict(getattr(cfg, "options", {}) or {}) if cfg is not None else {}
                options = validate_encoder_options(spec, options, f"encoders.{name}.options")
                self._built[name] = spec.build(weights=weights, options=options, model=self.model)
        return self._built[name]

    def features(self, name: str, image: Image.Image) -> Any:
        """The encoder's output for ``image``, computed at most once per hub."""
        key = (name, image_key(image))
        st = self.stats.setdefault(name, CacheStats())
        if key in self._cache:
            st.hits += 1
            return self._cache[key]
        st.misses += 1
        out = self.get(name).encode(image)
        self._cache[key] = out
        return out

    def clear(self) -> None:
        self._cache.clear()


def lazy(target: str, **bound: Any) -> Callable[..., Any]:
    """A callable that imports ``"package.module:function"`` on first call, with ``bound``
    keyword arguments. Keeps heavy imports (transformers models) out of plugin loading."""
    module_name, _, attr = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        import importlib

        fn = getattr(importlib.import_module(module_name), attr)
        return fn(*args, **bound, **kwargs)

    call.__qualname__ = call.__name__ = f"lazy({target})"
    return call


def require_weights(name: str, weights: Any) -> str:
    """Helper for ``build`` functions: a clear error when no local weights path is set."""
    if not weights:
        raise EncoderUnavailableError(
            f"encoder {name!r} needs local weights",
            hint=f"set encoders.{name}.weights in your config to a local folder or file "
            "(perceive never downloads weights)",
        )
    return str(weights)
