"""The conformance kit of a re-encode branch (a :class:`perceive.BranchSpec` a plugin registers).

``check_branch(name)`` builds a tiny random VPT model carrying the branch (its tokens added to a
tiny tokenizer, its encoder and projector at the plugin's ``tiny_config`` sizes) and checks, on
real photos and awkward images:

* ``declaration``: the spec is well formed (tokens, placeholder, the methods implemented);
* ``action``: a features action of the same name is registered, its span opens and closes with
  the branch's tokens, and the branch's ``encoder`` is a registered encoder;
* ``model``: a model with the branch builds (``build_encoder``, ``build_projector``);
* ``preprocess[image]``: the training preprocessing gives tensors and a positive placeholder
  count (the one ``placeholders(config)`` declares, when it declares one), and the encoded,
  projected image fills exactly that many ``(n, hidden)`` finite rows;
* ``batch``: two images collated give the rows of each, in order (batching changes nothing);
* ``features``: ``model.branch_features`` is deterministic and ``model.project_features`` turns
  it into the placeholder rows, which depend on the control vector (the projector conditions);
* ``encoder``: the registered encoder, built against the model, gives features that project to
  its declared placeholder count;
* ``training``: the paper's two-pass forward with the branch's span and pads gives a finite loss
  whose gradient reaches the projector (through the control state too) and the encoder;
* ``save-load``: the model saves and reloads with the same rows.

>>> from perceive.testing import check_branch
>>> report = check_branch("my_branch")  # a branch your plugin registers
>>> assert report.ok, report.render()
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

from perceive.conformance import CheckResult, ConformanceReport, awkward_images, real_photos
from perceive.images import as_rgb
from perceive.reencode.branch_spec import BranchInput, BranchSpec, branch_problems


class BranchReport(ConformanceReport):
    """A :class:`~perceive.conformance.ConformanceReport` of one branch (``action``: its name)."""

    def render(self) -> str:
        return super().render().replace("conformance of action", "conformance of branch", 1)


class _BranchChecker:
    def __init__(self, spec: BranchSpec, registry, plugin: str | None):
        self.spec = spec
        self.name = spec.name
        self.registry = registry
        self.report = BranchReport(spec.name, plugin)
        self.model: Any = None
        self.cfg: Any = None

    def record(self, name: str, fn: Callable[[], str | None]) -> bool:
        try:
            detail = fn()
        except AssertionError as exc:  # its message alone, without pytest's rewritten explanation
            self.report.results.append(CheckResult(name, "fail", (str(exc) or "failed").splitlines()[0]))
            return False
        except Exception as exc:  # a plugin's bug: recorded, the kit goes on
            self.report.results.append(CheckResult(name, "fail", f"{type(exc).__name__}: {exc}"))
            return False
        self.report.results.append(CheckResult(name, "pass", detail or ""))
        return True

    # -- checks ---------------------------------------------------------------------------

    def declaration(self):
        problems = branch_problems(self.spec)
        assert not problems, "; ".join(problems)

    def action(self):
        t = self.spec.tokens
        assert self.name in self.registry.actions, (
            f"no action named {self.name!r} is registered: the loop dispatches a branch's span to the features "
            "action of the same name")
        action = self.registry.action(self.name)
        assert action.observation == "features", f"action {self.name!r} gives {action.observation}, not features"
        assert (action.grammar.start, action.grammar.end) == (t.start, t.end), (
            f"action {self.name!r} spans {action.grammar.start} ... {action.grammar.end}, the branch "
            f"{t.start} ... {t.end}")
        assert self.spec.encoder in self.registry.encoders, (
            f"the branch's encoder {self.spec.encoder!r} is not a registered encoder")
        tiny = self.spec.tiny_config(64).get("encoder", self.spec.encoder)
        assert tiny in self.registry.encoders, f"tiny_config's encoder {tiny!r} is not a registered encoder"

    def build(self):
        from perceive.testing.tiny import build_tokenizer, tiny_vpt_model

        # a model without the branch gains it, its tokens included (as `model.add_branches` does)
        tok = build_tokenizer(branches=[], registry=self.registry)
        self.model = tiny_vpt_model(branches=(), tokenizer=tok, registry=self.registry)
        self.cfg = self.model.add_branch(self.name, registry=self.registry, spec=self.spec)
        ids = tok.convert_tokens_to_ids(list(self.spec.tokens.all))
        assert [self.cfg.start_id, self.cfg.action_id, self.cfg.end_id, self.cfg.pad_id] == ids, (
            "the branch's token ids are not its tokens' ids")
        return f"{sum(p.numel() for p in self.model.branches[self.name].parameters())} parameters"

    def _rows(self, item: BranchInput, control=None):
        import torch

        m = self.model
        with torch.no_grad():
            feats, sizes = m.encode_extra(self.name, item.tensors)
            return m.project(self.name, feats, control, sizes)

    def _check_rows(self, rows, n: int, what: str):
        import torch

        hidden = self.model.config.hidden_size
        assert tuple(rows.shape) == (n, hidden), f"{what}: {tuple(rows.shape)} projected rows, want ({n}, {hidden})"
        assert torch.isfinite(rows).all(), f"{what}: the projected rows hold NaN or inf"

    def preprocess(self, image, strict: bool):
        item = self.spec.preprocess(as_rgb(image), self.cfg, self.model)
        assert isinstance(item, BranchInput), f"preprocess must return a BranchInput, got {type(item).__name__}"
        assert isinstance(item.tensors, dict) and item.tensors, "preprocess gave no tensors"
        n = item.placeholders
        assert isinstance(n, int) and n > 0, f"placeholders must be a positive int, got {n!r}"
        declared = self.spec.placeholders(self.cfg)
        assert declared is None or declared == n, f"placeholders(config) says {declared}, preprocess {n}"
        self._check_rows(self._rows(item), n, "unconditioned")
        return f"{n} placeholders"

    def batch(self, a, b):
        import torch

        items = [self.spec.preprocess(as_rgb(x), self.cfg, self.model) for x in (a, b)]
        batch = self.spec.collate([it.tensors for it in items])
        hidden = self.model.config.hidden_size * self.model.config.projector_scale
        control = torch.randn(2, hidden, generator=torch.Generator().manual_seed(0))
        rows = self._rows(BranchInput(batch, 0), control)
        self._check_rows(rows, items[0].placeholders + items[1].placeholders, "batch of two")
        one = torch.cat([self._rows(it, control[k:k + 1]) for k, it in enumerate(items)])
        torch.testing.assert_close(rows, one, atol=1e-4, rtol=1e-4,
                                   msg=lambda m: f"a batch of two gives other rows than each alone: {m}")

    def features(self, image):
        import torch

        m = self.model
        f1, f2 = m.branch_features(self.name, image), m.branch_features(self.name, image)
        assert torch.equal(f1, f2), "branch_features gave two different results for one image"
        g = torch.Generator().manual_seed(1)
        c1, c2 = (torch.randn(m.config.hidden_size * m.config.projector_scale, generator=g) for _ in range(2))
        with torch.no_grad():
            r1, r2 = m.project_features(self.name, f1, c1), m.project_features(self.name, f1, c2)
        assert r1.shape != r2.shape or not torch.allclose(r1, r2), (
            "the projected rows do not depend on the control vector")
        n = self.spec.preprocess(as_rgb(image), self.cfg, m).placeholders
        self._check_rows(r1, n, "project_features")
        return f"features {tuple(f1.shape)}"

    def encoder(self, image):
        import torch

        from perceive.encoders import EncoderHub

        spec = self.registry.encoder(self.cfg.encoder)
        hub = EncoderHub(self.registry.encoder_specs(), model=self.model)
        out = torch.as_tensor(hub.features(self.cfg.encoder, image))
        control = torch.zeros(self.model.config.hidden_size * self.model.config.projector_scale)
        with torch.no_grad():
            rows = self.model.project_features(self.name, out, control)
        if spec.placeholders is not None:
            assert rows.shape[0] == spec.placeholders, (
                f"encoder {spec.name!r} declares {spec.placeholders} placeholders, its features project to "
                f"{rows.shape[0]}")
        return f"{spec.name}: {tuple(out.shape)}"

    def training(self, image):
        import torch

        m = self.model
        tok, cfg, b = m.tokenizer, m.config, self.cfg
        item = self.spec.preprocess(as_rgb(image), b, m)

        def text(s):
            return tok.encode(s, add_special_tokens=False)

        ids = ([cfg.special.im_start, *text("user\nq"), cfg.special.im_end, cfg.special.im_start,
                *text("assistant\n"), b.start_id, b.action_id, b.end_id, cfg.special.im_end, cfg.special.im_start,
                *text("user\n"), cfg.special.vision_start, *[b.pad_id] * item.placeholders, cfg.special.vision_end,
                cfg.special.im_end, *text("a")])
        input_ids = torch.tensor([ids])
        m.train()
        try:
            m.zero_grad()
            out = m(input_ids=input_ids, labels=input_ids.clone(), extra={self.name: item.tensors})
            assert torch.isfinite(out.loss), f"the loss is {out.loss.item()}"
            out.loss.backward()
            grads = {n: p.grad for n, p in m.branches[self.name].named_parameters()}
            moved = [n for n, g in grads.items() if g is not None and g.abs().sum() > 0]
            assert any(n.startswith("projector.") for n in moved), "no gradient reaches the projector"
            if any(n.startswith("encoder.") for n in grads):
                assert any(n.startswith("encoder.") for n in moved), "no gradient reaches the encoder"
            assert out.controls.get(self.name) is not None, "the second pass got no control state"
        finally:
            m.zero_grad()
            m.eval()
        return f"loss {out.loss.item():.3f}"

    def save_load(self, image):
        import torch

        from perceive.model import load_model, save_model
        from perceive.plugins import get_registry

        installed = get_registry().branches.get(self.name)
        if installed is None or type(installed.obj) is not type(self.spec):
            return "skipped: the branch is not the installed one (load_model builds that)"
        control = torch.ones(self.model.config.hidden_size * self.model.config.projector_scale)
        with torch.no_grad():
            before = self.model.project_features(self.name, self.model.branch_features(self.name, image), control)
        with tempfile.TemporaryDirectory() as tmp:
            again = load_model(save_model(self.model, tmp))
            with torch.no_grad():
                after = again.project_features(self.name, again.branch_features(self.name, image), control)
        torch.testing.assert_close(before, after, msg=lambda m: f"the reloaded model projects other rows: {m}")


def check_branch(branch: BranchSpec | str, *, registry=None, quick: bool = False) -> BranchReport:
    """Run the branch conformance checks on one branch (an instance, or a registered name).
    ``registry`` defaults to the installed plugins. ``quick`` uses one photo and fewer awkward
    images."""
    from perceive.plugins import get_registry

    registry = registry or get_registry()
    if isinstance(branch, str):
        branch = registry.branch(branch)
    plugin = registry.branches[branch.name].plugin if branch.name in registry.branches else None
    c = _BranchChecker(branch, registry, plugin)
    if not c.record("declaration", c.declaration):
        return c.report
    c.record("action", c.action)
    if not c.record("model", c.build):
        return c.report
    photos = real_photos()
    awkward = awkward_images()
    if quick:
        photos = dict(list(photos.items())[:1])
        awkward = {k: awkward[k] for k in ("1x1", "4000x300")}
    for name, img in photos.items():
        c.record(f"preprocess[{name}]", lambda img=img: c.preprocess(img, strict=True))
    for name, img in awkward.items():
        c.record(f"preprocess[{name}]", lambda img=img: c.preprocess(img, strict=False))
    first, *rest = photos.values()
    second = rest[0] if rest else next(iter(awkward.values()))
    c.record("batch", lambda: c.batch(first, second))
    c.record("features", lambda: c.features(first))
    c.record("encoder", lambda: c.encoder(first))
    c.record("training", lambda: c.training(first))
    c.record("save-load", lambda: c.save_load(first))
    return c.report


__all__ = ["BranchReport", "check_branch"]
