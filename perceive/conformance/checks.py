"""The conformance kit: every action must pass these checks.

``check_action(action)`` runs the action on real photos and awkward inputs, through the same
hooks the perception loop uses, and returns a :class:`ConformanceReport`. Checks:

* ``declaration``: name, grammar, ``Args`` model, observation kind, ``run`` implemented;
* ``encoders`` (an action that uses encoders): each is registered and gives the feature layout
  the action's projector takes (its ``layout``);
* ``examples``: ``examples()`` gives at least one valid ``Args`` value;
* ``parse``: the span parser returns ``Args`` or raises ``SpanError``/``ValueError`` on any
  span, including garbage; the streaming parser never raises;
* ``run[image]``: on real photos every example succeeds; on awkward inputs it succeeds or fails
  with a typed :class:`~perceive.errors.PerceiveError` (when every example fails so, nothing was
  checked on that input: the check is a skip that says so, never a pass). Every observation holds
  the :class:`~perceive.observations.Invariant` s (the declared kind; a view is RGB, its frame
  matches its pixels, its box lies inside the original image, and a 1:1 view holds exactly the
  original's pixels under its box; features are finite and of the encoder's declared layout and
  width; text is a string, names the view it was read in, and its boxes are in the original's
  pixels, inside the region read). Dispatch checks them on every call, here as at run time;
  a breach fails the check even on an awkward input;
* ``deterministic``: the same call twice gives the same observation;
* ``no-mutation``: the input images are byte-identical after the call;
* ``box[...]``: for actions that accept a box, boxes on the border, partly outside and fully
  outside the image give a box inside the image or a typed error;
* ``nested``: called on a crop, the result (a text's boxes too) maps back inside that crop's box
  in the original.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from PIL import Image, ImageChops
from pydantic import BaseModel

from perceive.actions import Action, ActionCall, ActionContext, SpanError
from perceive.conformance.images import awkward_images, real_photos
from perceive.dispatch import FailureStage, dispatch
from perceive.encoders import EncoderHub, image_key, layout_mismatch
from perceive.geometry import Box, Frame
from perceive.images import as_rgb
from perceive.observations import Text, View
from perceive.protocols.codec import DictCodec
from perceive.protocols.vpt_stream import StreamParser


class CheckStatus(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  # nothing to check (the detail says why): neither a pass nor a failure

    def __str__(self) -> str:
        return self.value


@dataclass
class CheckResult:
    name: str
    status: CheckStatus  # a plain "pass" | "fail" | "skip" is accepted
    detail: str = ""

    def __post_init__(self):
        self.status = CheckStatus(self.status)


class Skipped(Exception):  # noqa: N818 - a check's outcome, not an error
    """Raised by a check that found nothing to check; its message says why."""


@dataclass
class ConformanceReport:
    action: str
    plugin: str | None
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    def render(self) -> str:
        mark = {"pass": "ok  ", "fail": "FAIL", "skip": "skip"}
        head = f"conformance of action {self.action!r}" + (
            f" (plugin {self.plugin!r})" if self.plugin else "")
        lines = [head]
        for r in self.results:
            lines.append(f"  [{mark[r.status]}] {r.name}" + (f": {r.detail}" if r.detail else ""))
        n_fail = len(self.failures)
        n_pass = sum(r.status == "pass" for r in self.results)
        n_skip = sum(r.status == "skip" for r in self.results)
        lines.append(f"{n_pass} passed, {n_fail} failed" + (f", {n_skip} skipped" if n_skip else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "plugin": self.plugin, "ok": self.ok,
                "results": [r.__dict__ for r in self.results]}


class _Checker:
    def __init__(self, action: Action, registry, hub: EncoderHub | None, options: dict,
                 timeout_s: float | None = None):
        self.action = action
        self.timeout_s = timeout_s
        self.pm = registry.pm
        self.hub = hub
        self.options = options
        self.report = ConformanceReport(action.name, _plugin_of(registry, action.name))

    def record(self, name: str, fn: Callable[[], str | None]) -> None:
        try:
            detail = fn()
            self.report.results.append(CheckResult(name, "pass", detail or ""))
        except Skipped as exc:
            self.report.results.append(CheckResult(name, "skip", str(exc)))
        except AssertionError as exc:
            self.report.results.append(CheckResult(name, "fail", str(exc)))
        except Exception as exc:
            self.report.results.append(CheckResult(name, "fail", f"{type(exc).__name__}: {exc}"))

    def context(self, root: Image.Image, frame: Frame | None = None,
                image: Image.Image | None = None) -> ActionContext:
        frame = frame or Frame.root(*root.size)
        return ActionContext(image=image if image is not None else root, frame=frame, root=root,
                             options=dict(self.options), encoders=self.hub)

    def run(self, args: BaseModel, ctx: ActionContext):
        call = ActionCall(self.action.name, args, target=ctx.frame.id, forced=True)
        res = dispatch(self.pm, self.action, call, ctx, timeout_s=self.timeout_s)
        # a hung call is never an acceptable answer, even to an awkward input
        _require(res.failure is None or not res.failure.timed_out, f"{args!r}: {res.failure and res.failure.message}")
        # dispatch checked the observation's invariants (perceive.observations.check_observation, as
        # at run time): a breach fails the check whatever the input, never passes for a typed refusal
        if res.failure is not None and res.failure.stage == FailureStage.OBSERVATION:
            broke = f" (invariant {res.failure.invariant})" if res.failure.invariant else ""
            raise AssertionError(f"{args!r}{broke}: {res.failure.message}")
        return res

    # -- checks -----------------------------------------------------------------------------

    def declaration(self) -> None:
        from perceive.actions import action_problems

        problems = action_problems(self.action)
        _require(not problems,
                 "; ".join(problems))

    def encoders(self) -> str:
        specs = self.hub.specs
        for name in self.action.encoders:
            _require(name in specs,
                     f"encoder {name!r} is not registered: register it (perceive_register_encoders) or drop it "
                     "from the action's encoders")
            if getattr(self.action, "layout", None) is not None and specs[name].layout != self.action.layout:
                message, hint = layout_mismatch(self.action, name, specs[name].layout, specs)
                raise AssertionError(f"{message}\n  -> {hint}")
        return f"{len(self.action.encoders)} encoder(s)"

    def examples(self) -> str:
        ex = self.action.examples()
        _require(ex,
                 "examples() returned nothing: give at least one Args value to run")
        bad = [e for e in ex if not isinstance(e, self.action.Args)]
        _require(not bad,
                 f"examples() returned non-{self.action.Args.__name__} values: {bad}")
        return f"{len(ex)} example(s)"

    def parse(self) -> str:
        g = self.action.grammar
        spans = [[], [" "], ["hello"], ["<|x_99|>"], ["<|y_-1|>"], list(g.inner),
                 list(g.inner) * 3, [g.start], ["<|unknown|>", *g.inner[:1]]]
        spans += [[t] for t in g.inner[:32]]
        for span in spans:
            try:
                out = self.action.parse(span)
            except (SpanError, ValueError):
                continue
            _require(isinstance(out, self.action.Args),
                     f"parse({span}) returned {type(out).__name__}, not {self.action.Args.__name__}")
        # the streaming parser over whole spans, the path generation takes
        vocab = [g.start, g.end, *g.inner, "<|x_99|>", "text", " "]
        codec = DictCodec(dict(enumerate(vocab)))
        parser = StreamParser([self.action], codec)
        ids = [0, *range(2, len(vocab)), 1, 0, 2, 1, 1, 0]
        parser.feed_many(ids)
        parser.close()
        return f"{len(spans)} spans"

    def run_on(self, name: str, image: Image.Image, strict: bool) -> str:
        before = image_key(image)
        rgb = as_rgb(image)
        n_ok = 0
        refused = []
        for args in self.action.examples():
            ctx = self.context(image, image=rgb if image.mode != "RGB" else image)
            res = self.run(args, ctx)
            if res.failure is not None:
                _require(not strict and res.failure.typed,
                         f"{args!r} failed at {res.failure.stage}: {res.failure.error_type}: {res.failure.message}")
                refused.append(f"{res.failure.error_type}: {res.failure.message.splitlines()[0]}")
                continue
            again = self.run(args, self.context(image, image=ctx.image))
            _require(again.ok,
                     f"second run of {args!r} failed: {again.failure}")
            _require(_same(res.observation, again.observation),
                     f"not deterministic: two runs of {args!r} gave different observations")
            n_ok += 1
        _require(image_key(image) == before,
                 "the action mutated its input image")
        if n_ok == 0:
            # nothing was checked on this input: an empty check is never a pass
            _require(not strict, "no example ran: examples() gave nothing to run")
            raise Skipped(f"no example ran: each of {len(refused)} was refused with a typed error "
                          f"({'; '.join(sorted(set(refused)))}), so nothing was checked on this input")
        return f"{n_ok} example(s) ran" + (f", {len(refused)} refused with a typed error" if refused else "")

    def box_probe(self, kind: str, photo: Image.Image) -> str:
        W, H = photo.size
        box = {
            "border": Box(0, 0, W, H),
            "corner": Box(W - 1, H - 1, W, H),
            "partly-outside": Box(-W / 4, -H / 4, W / 2, H / 2),
            "fully-outside": Box(W + 10, H + 10, W + 50, H + 60),
        }[kind]
        args = self.action.args_for_box(box)
        res = self.run(args, self.context(photo))
        if res.failure is not None:
            _require(res.failure.typed,
                     f"untyped failure {res.failure.error_type}: {res.failure.message}")
            _require(kind == "fully-outside",
                     f"box {box.as_tuple()} failed: {res.failure.message}")
            return f"typed error: {res.failure.error_type}"
        if kind == "fully-outside" and self.action.observation in ("view", "text"):
            raise AssertionError(f"a box fully outside the image gave {self.action.observation}")
        if kind == "border" and self.action.observation in ("view", "text"):
            b = res.observation[0].box
            _require(b.as_tuple() == (0, 0, W, H),
                     f"whole-image box became {b.as_tuple()}")
        return "ok"

    def nested(self, photo: Image.Image) -> str:
        W, H = photo.size
        outer = Box(W // 4, H // 4, W // 4 + W // 2, H // 4 + H // 2)
        frame = Frame.root(W, H).child("crop", outer)
        crop = photo.crop(outer.as_int_tuple())
        ctx = self.context(photo, frame=frame, image=as_rgb(crop))
        for args in self.action.examples():
            res = self.run(args, ctx)
            _require(res.ok,
                     f"{args!r} on a crop failed: {res.failure}")
            for item in res.observation:
                boxes = [item.box] + ([b for b, _ in item.boxes] if isinstance(item, Text) else [])
                for b in boxes:
                    _require(outer.x0 <= b.x0 and b.x1 <= outer.x1 and outer.y0 <= b.y0 and b.y1 <= outer.y1,
                             f"chosen inside crop {outer.as_tuple()}, the result maps to {b.as_tuple()}")
        return "boxes map back inside the crop"


def _require(ok: bool, message: str) -> None:
    # not `assert`: pytest rewrites asserts in installed plugin packages, which would bury the
    # message under introspection output, and `python -O` would drop the checks entirely
    if not ok:
        raise AssertionError(message)


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, View):
            if x.frame != y.frame or x.image.size != y.image.size:
                return False
            if ImageChops.difference(x.image, y.image).getbbox() is not None:
                return False
        elif isinstance(x, Text):
            if (x.text, x.source, x.box, tuple((b, t) for b, t in x.boxes)) != \
                    (y.text, y.source, y.box, tuple((b, t) for b, t in y.boxes)):
                return False
        else:
            import torch

            if not torch.equal(x.tensor, y.tensor) or x.num_placeholders != y.num_placeholders:
                return False
    return True


def _plugin_of(registry, name: str) -> str | None:
    r = registry.actions.get(name)
    return r.plugin if r else None


def check_action(action: Action | str, *, registry=None, hub: EncoderHub | None = None,
                 options: dict | None = None, quick: bool = False,
                 timeout_s: float | None = 120.0) -> ConformanceReport:
    """Run the conformance checks on one action (an instance, or a registered name).

    ``registry`` defaults to the installed plugins. Re-encode actions get tiny random-weight
    encoders unless ``hub`` is given. ``quick`` uses one photo and fewer awkward inputs.
    ``timeout_s`` is every call's timeout: a call past it fails its check (and after two, the
    action is quarantined, so the rest fail at once instead of hanging).
    """
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    if isinstance(action, str):
        action = registry.action(action)
    if hub is None:
        hub = EncoderHub(registry.encoder_specs(), tiny=True)
    c = _Checker(action, registry, hub, options or {}, timeout_s)
    c.record("declaration", c.declaration)
    if c.report.failures:
        return c.report
    if action.encoders:
        c.record("encoders", c.encoders)
        if c.report.failures:  # every run would fail with the same cause
            return c.report
    c.record("examples", c.examples)
    c.record("parse", c.parse)
    if c.report.failures:
        return c.report
    photos = real_photos()
    awkward = awkward_images()
    if quick:
        photos = dict(list(photos.items())[:1])
        awkward = {k: awkward[k] for k in ("1x1", "4000x300", "rgba")}
    for name, img in photos.items():
        c.record(f"run[{name}]", lambda img=img, name=name: c.run_on(name, img, strict=True))
    for name, img in awkward.items():
        c.record(f"run[{name}]", lambda img=img, name=name: c.run_on(name, img, strict=False))
    photo = next(iter(photos.values()))
    if action.args_for_box(Box(0, 0, 1, 1)) is None:
        c.report.results.append(CheckResult("box[*]", "skip", "action takes no box"))
    else:
        for kind in ("border", "corner", "partly-outside", "fully-outside"):
            c.record(f"box[{kind}]", lambda kind=kind: c.box_probe(kind, photo))
    c.record("nested", lambda: c.nested(photo))
    return c.report
