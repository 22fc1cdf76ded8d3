"""The online perception loop.

Generate until a perception span closes, dispatch the call through the plugin registry, feed
the observation, and keep generating on the same KV cache. Only new tokens are ever prefilled:
the span's closing token, the end of the assistant turn, a user turn with the view's image
tokens or the feature placeholders, and the next assistant header. Re-encode spans take their
control signal from the decode step that fed the start token (no second pass per step), and
encoder features are cached per image (``EncoderHub``).

``reprefill=True`` is the reference-style baseline: after each observation the whole
conversation is prefilled again from scratch (vision tower included), as the paper's offline
second round does. Both paths give the same tokens.

Many samples run together (``run``): each step feeds every active sample's pending tokens in one
forward, right-padded to the longest and masked, so samples may take different hop paths.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import DynamicCache

from perceive.actions import ActionCall, ActionContext, validate_action_options
from perceive.dispatch import dispatch
from perceive.encoders import EncoderHub
from perceive.errors import InputError, ObservationError, PerceiveError
from perceive.geometry import ROOT, Frame
from perceive.images import as_rgb, load_image
from perceive.loop.positions import sequence_positions, text_positions
from perceive.loop.template import ChatLayout
from perceive.observations import Features, View
from perceive.protocol import ParseError, PerceptionCall, StreamParser, codec_from_tokenizer
from perceive.trace import EventType, FinishReason, Hop, Trace


@dataclass
class LoopOptions:
    max_hops: int = 4
    max_new_tokens: int = 256
    #: after a malformed span: keep generating, or finish the sample
    on_malformed: str = "continue"
    #: reference-style baseline: prefill the whole conversation again after each observation
    reprefill: bool = False
    #: False: never dispatch (generation as the reference's offline first round does)
    dispatch: bool = True
    #: which view a span's coordinates refer to: the latest view shown, or the original image
    target: str = "latest"
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


@dataclass
class Decision:
    """What a controller wants done.

    ``dispatch``: run the call the model made (``options``, ``target`` view, optional ``args``
    overriding the parsed ones); ``ignore``: no observation, keep generating; ``stop``: finish the
    sample; ``finish``: the answer stands; ``force``: run ``action`` with ``args`` (no tokens from
    the model) and continue."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    action: str | None = None
    args: Any = None
    reason: FinishReason | None = None
    node: str | None = None  # the graph node that decided (recorded on the hop)

    def __post_init__(self):
        if self.reason is not None:  # an unknown reason fails here, in the controller, not mid-batch
            self.reason = FinishReason(self.reason)


class FreeChoice:
    """The default controller: the model decides what to call, hop after hop, until it answers
    or ``max_hops`` is spent."""

    def start(self, loop: PerceptionLoop, s: _Sample) -> list[Decision]:
        return []

    def on_call(self, loop: PerceptionLoop, s: _Sample, ev: PerceptionCall) -> Decision:
        if s.hops >= loop.options.max_hops:
            loop._budget_event(s, ev.action, ev.tokens, loop.options.max_hops)
            return Decision("ignore")
        return Decision("dispatch", options=dict(loop.options.action_options.get(ev.action, {})))

    def on_answer(self, loop: PerceptionLoop, s: _Sample) -> Decision:
        return Decision("finish", reason=FinishReason.EOS)


@dataclass
class Answer:
    text: str
    trace: Trace
    token_ids: list[int]
    logits: list[torch.Tensor] | None = None

    @property
    def error(self) -> dict | None:
        return self.trace.error

    @property
    def ok(self) -> bool:
        return self.trace.error is None


@dataclass
class Segment:
    """Tokens fed in one forward. ``overrides`` replace token embeddings at local indices
    (control states, projected features); ``images`` fill the image-pad runs in order."""

    ids: list[int]
    positions: torch.Tensor  # (3, n)
    kind: str  # prompt | decode | force | observe
    overrides: dict[int, torch.Tensor] = field(default_factory=dict)
    images: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (pixel_values, grid_thw)
    embeds: torch.Tensor | None = None


@dataclass
class _Sample:
    index: int
    root: Image.Image
    trace: Trace
    parser: StreamParser | None
    gen: torch.Generator
    ids: Any = field(default_factory=lambda: itertools.count(1))
    views: dict[str, View] = field(default_factory=dict)
    target: str = ROOT
    segments: list[Segment] = field(default_factory=list)
    pending: Segment | None = None
    next_pos: int = 0
    generated: list[int] = field(default_factory=list)
    answer_from: int = 0  # index in generated where the current assistant turn starts
    hops: int = 0
    fed: int = 0  # tokens fed to the model so far (its context in use)
    decoded_since_hop: int = 0
    awaiting_control: Any = None  # BranchConfig whose start token was just fed
    forced_reencode: Decision | None = None  # a re-encode the controller wrote into the first turn
    node: str | None = None  # the graph node running (graph runs)
    state: dict[str, Any] = field(default_factory=dict)  # the controller's per-sample state
    observations: dict[tuple, Any] = field(default_factory=dict)  # dispatched calls, for reuse
    done: bool = False
    logits: list[torch.Tensor] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def frame(self, view_id: str) -> Frame:
        return Frame.root(*self.root.size) if view_id == ROOT else self.views[view_id].frame

    def image(self, view_id: str) -> Image.Image:
        return self.root if view_id == ROOT else self.views[view_id].image


class PerceptionLoop:
    """Runs a VPT model with perception dispatch. One loop is one session: its encoder cache is
    shared by every sample it runs."""

    def __init__(self, model, registry=None, options: LoopOptions | None = None, hub: EncoderHub | None = None,
                 encoder_configs: dict | None = None, policy=None, controller=None):
        from perceive.plugins import get_registry

        self.model = model
        #: optional ``policy(sample_index, generated_ids, logits) -> token id | None`` that overrides
        #: the model's choice (constrained decoding, scripted spans in tests); None keeps it
        self.policy = policy
        #: decides what happens at each closed call and at each answer (default: free choice)
        self.controller = controller or FreeChoice()
        self.registry = registry or get_registry()
        options = options or LoopOptions()
        # the options the model was trained with (a region margin, ...), under the run's own
        defaults = model.config.action_defaults
        merged = {a: {**defaults.get(a, {}), **options.action_options.get(a, {})}
                  for a in {*defaults, *options.action_options}}
        # each action's Options model checks them now, not halfway through a batch
        merged = {a: validate_action_options(self.registry.action(a), o, "action options")
                  if a in self.registry.actions else o for a, o in merged.items()}
        self.options = dataclasses.replace(options, action_options=merged)
        self.hub = hub or EncoderHub(self.registry.encoder_specs(), encoder_configs or {}, model=model)
        cfg = model.config
        self.cfg = cfg
        self.tokenizer = model.tokenizer
        self.layout = ChatLayout(self.tokenizer, self.options.system) if self.tokenizer is not None else None
        self.processor = model.image_processor
        self.merge = model.spatial_merge_size
        self.eos = set(cfg.special.eos) | {cfg.special.im_end}
        self.start_branch = {b.start_id: b for b in cfg.branches.values()}
        names = self.options.actions
        self.actions = [a for a in self.registry.select(names) if a.grammar is not None]
        self.perception_ids = self._perception_ids()
        self._check_encoders()
        self._warpers = self._sampling_warpers()

    def _perception_ids(self) -> frozenset[int]:
        """Ids of every perception token (each installed action's span tokens, the model's region
        and branch tokens): never part of an answer's text."""
        tok, cfg = self.tokenizer, self.cfg
        ids = set()
        if tok is not None:
            words = {w for a in self.registry.select(None) if a.grammar is not None for w in a.grammar.tokens}
            unk = tok.unk_token_id
            ids |= {i for i in tok.convert_tokens_to_ids(sorted(words)) if i is not None and i != unk}
        if cfg.region is not None:
            ids |= {cfg.region.start_id, cfg.region.end_id, *cfg.region.x_ids, *cfg.region.y_ids}
        for b in cfg.branches.values():
            ids |= {b.start_id, b.action_id, b.end_id, b.pad_id}
        return frozenset(ids)

    def _sampling_warpers(self):
        """transformers' logits warpers for sampling (built once per loop)."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        o = self.options
        warpers = LogitsProcessorList([TemperatureLogitsWarper(o.temperature)] if o.do_sample else [])
        if o.do_sample and o.top_k:
            warpers.append(TopKLogitsWarper(o.top_k))
        if o.do_sample and o.top_p:
            warpers.append(TopPLogitsWarper(o.top_p))
        return warpers

    def _check_encoders(self) -> None:
        """A re-encode action may use any registered encoder whose output its projector accepts."""
        from perceive.errors import ConfigError

        for action, opts in self.options.action_options.items():
            name = opts.get("encoder")
            branch = self.cfg.branches.get(action)
            if not name or branch is None:
                continue
            spec = self.registry.encoder(name)
            want = branch.feature_dim
            if spec.feature_dim is not None and spec.feature_dim != want:
                raise ConfigError(
                    f"actions.{action}.encoder: {name!r} gives {spec.feature_dim}-wide features but the model's "
                    f"{action} projector takes {want}",
                    hint=f"use an encoder with {want}-wide output, e.g. {branch.encoder!r}")

    @classmethod
    def from_config(cls, config, registry=None, policy=None) -> PerceptionLoop:
        """Build model and loop from a :class:`perceive.config.PerceiveConfig` (or a YAML path)."""
        from perceive.config import PerceiveConfig, load_config
        from perceive.errors import ConfigError
        from perceive.model import load_model
        from perceive.plugins import get_registry

        registry = registry or get_registry()
        cfg = config if isinstance(config, PerceiveConfig) else load_config(config, registry=registry)
        errors = cfg.check_names(registry)
        if errors:
            raise ConfigError("; ".join(errors))
        if cfg.model.path is None:
            raise ConfigError("model.path is not set", hint="point it at a local model folder")
        model = load_model(cfg.model.path, device=cfg.device, dtype=None if cfg.dtype == "auto" else cfg.dtype)
        action_options = {}
        for name, a in (cfg.actions or {}).items():
            action_options[name] = {**a.options, **({"encoder": a.encoder} if a.encoder else {})}
        rt = cfg.runtime
        options = LoopOptions(max_hops=rt.max_hops, max_new_tokens=rt.max_new_tokens, on_malformed=rt.on_malformed,
                              action_options=action_options, actions=cfg.enabled_actions(),
                              action_timeout_s=rt.action_timeout_s)
        return cls(model, registry=registry, options=options, encoder_configs=cfg.encoder_configs(), policy=policy)

    # -- public API --------------------------------------------------------------------------

    def ask(self, image, question: str) -> Answer:
        """Answer one question about one image. An unreadable image raises ``ImageError``; an
        empty question, or one longer than the model's context, ``InputError``."""
        answer = self.run([(load_image(image), question)])[0]
        if answer.trace.finish_reason is FinishReason.ERROR and answer.error["type"] == InputError.__name__:
            raise InputError(answer.error["message"], hint=answer.error.get("hint"))
        return answer

    def ask_batch(self, items: list[tuple[Any, str]]) -> list[Answer]:
        """Answer many (image, question) pairs together. A sample whose image cannot be read, or
        whose perception call fails, finishes with the error in its trace; the rest go on."""
        samples: list[tuple[Image.Image | None, str, dict | None]] = []
        for image, question in items:
            try:
                samples.append((load_image(image), question, None))
            except PerceiveError as exc:
                samples.append((None, question, _err(exc)))
        keep = [i for i, (_, _, e) in enumerate(samples) if e is None]
        results = iter(self.run([samples[i][:2] for i in keep], indices=keep))
        out = []
        for _, q, e in samples:
            if e is None:
                out.append(next(results))
            else:
                out.append(Answer("", Trace(question=q, error=e, finish_reason=FinishReason.ERROR), []))
        return out

    def run(self, items: list[tuple[Image.Image, str]], indices: list[int] | None = None) -> list[Answer]:
        """Run decoded images together. ``indices`` are the samples' positions in the caller's
        batch (they seed sampling and key the policy); default 0..n-1."""
        if self.layout is None:
            raise PerceiveError("this model has no tokenizer", hint="load a checkpoint that ships one")
        indices = list(range(len(items))) if indices is None else indices
        samples = [self._new_sample(i, img, q) for i, (img, q) in zip(indices, items, strict=True)]
        self._drive([s for s in samples if not s.done])
        return [self._answer(s) for s in samples]

    def generate_ids(self, prompt_ids: list[int], pixel_values=None, image_grid_thw=None,
                     max_new_tokens: int = 16) -> list[int]:
        """Generate from explicit ids (images already expanded to pads), without dispatch: the
        reference's own generation (the action token after a start token is forced and carries
        the control state). Returns prompt and new ids."""
        opts = self.options
        saved = (opts.dispatch, opts.max_new_tokens)
        opts.dispatch, opts.max_new_tokens = False, max_new_tokens
        try:
            s = _Sample(0, Image.new("RGB", (1, 1)), Trace(), None, torch.Generator().manual_seed(opts.seed))
            grids = [] if image_grid_thw is None else [g.tolist() for g in image_grid_thw]
            images = [] if pixel_values is None else [(pixel_values, image_grid_thw)]
            s.pending = self._segment(s, list(prompt_ids), "prompt", images=images, grids=grids)
            s.trace.prompt_tokens = len(prompt_ids)
            # a prompt that ends with a re-encode start token: the next token is forced
            s.awaiting_control = self.start_branch.get(int(prompt_ids[-1]))
            self._drive([s])
            return list(prompt_ids) + s.generated
        finally:
            opts.dispatch, opts.max_new_tokens = saved

    # -- set-up -----------------------------------------------------------------------------

    def _new_sample(self, index: int, image: Image.Image, question: str) -> _Sample:
        root = as_rgb(image)
        parser = StreamParser(self.actions, codec_from_tokenizer(self.tokenizer)) if self.options.dispatch else None
        s = _Sample(index, root, Trace(question=question if isinstance(question, str) else "", image_size=root.size),
                    parser, torch.Generator().manual_seed(self.options.seed + index))
        try:
            _check_question(question)
            pv, grid = self._pixels(root)
        except PerceiveError as exc:
            self._finish(s, FinishReason.ERROR, _err(exc))
            return s
        images, grids, blocks, reencode = [(pv, grid)], [grid.tolist()], [], None
        for d in self.controller.start(self, s):
            # calls the controller makes before the model speaks: views join the first user turn,
            # a re-encode opens the first assistant turn
            action = self.registry.action(d.action)
            if action.observation == "view":
                obs, hop = self._dispatch(s, ActionCall(d.action, d.args, forced=True), d.options, d.target, d.node)
                if obs is None:
                    return s
                try:
                    b, im, g = self._view_blocks(s, obs, hop, d.target)
                except PerceiveError as exc:
                    hop.error = _err(exc)
                    self._finish(s, FinishReason.OBSERVATION_INVALID, _err(exc))
                    return s
                blocks += b
                images += im
                grids += g
            else:
                reencode = next((b for b in self.cfg.branches.values() if b.action == d.action), None)
                if reencode is None:
                    msg = f"the model has no {d.action!r} branch to force"
                    self._finish(s, FinishReason.GRAPH_ERROR, {"type": "graph_error", "message": msg})
                    return s
                s.forced_reencode = Decision("dispatch", options=d.options, target=d.target, args=d.args, node=d.node)
        n = int(grid.prod()) // self.merge**2
        question = s.state.get("question", question)
        ids = self.layout.prompt(question, n, blocks)
        limit = self.model.max_positions
        if len(ids) + (reencode is not None) >= limit:
            # refuse before any forward: past the trained context the model only answers noise
            self._finish(s, FinishReason.ERROR, _err(InputError(
                f"the prompt is {len(ids)} tokens (image tokens included) but the model's context "
                f"(max_position_embeddings) is {limit}",
                hint="shorten the question, or use a smaller image")))
            return s
        if reencode is not None:
            ids = ids + [reencode.start_id]
            s.generated.append(reencode.start_id)
            if s.parser is not None:
                s.parser.feed(reencode.start_id)
            s.awaiting_control = reencode
        s.trace.prompt_tokens = len(ids)
        try:
            s.pending = self._segment(s, ids, "prompt", images=images, grids=grids)
        except PerceiveError as exc:
            self._finish(s, FinishReason.OBSERVATION_INVALID, _err(exc))
        return s

    def _pixels(self, image: Image.Image, view: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            if view:
                return self.model.view_pixels(image)
            inputs = self.processor(images=[image], return_tensors="pt")
        except ValueError as exc:  # e.g. an aspect ratio over 200, which Qwen2-VL cannot tile
            raise ObservationError(f"the model's image processor cannot take a {image.width}x{image.height} "
                                   f"image: {exc}", hint="choose a less extreme region") from exc
        return inputs["pixel_values"], inputs["image_grid_thw"][0]

    def _segment(self, s: _Sample, ids: list[int], kind: str, overrides=None, images=None, grids=()) -> Segment:
        if grids:
            pos, s.next_pos = sequence_positions(ids, self.cfg.special.image_pad, grids, self.merge, s.next_pos,
                                                 positions=self.cfg.positions)
        else:  # generated tokens are text, whatever their id (a model may emit <|image_pad|>)
            pos, s.next_pos = text_positions(len(ids), s.next_pos)
        seg = Segment(ids, pos, kind, dict(overrides or {}), list(images or []))
        seg.embeds = self._embed(seg)
        return seg

    @torch.no_grad()
    def _embed(self, seg: Segment) -> torch.Tensor:
        m = self.model
        ids = torch.tensor(seg.ids, device=m.device)
        e = m.embed(ids)
        if seg.images:
            pv = torch.cat([p for p, _ in seg.images]).to(m.device)
            grid = torch.stack([g.reshape(-1, 3) for _, g in seg.images]).reshape(-1, 3).to(m.device)
            img = m.image_embeds(pv, grid)
            mask = ids == self.cfg.special.image_pad
            if int(mask.sum()) != img.shape[0]:
                raise ObservationError(f"{int(mask.sum())} image tokens for {img.shape[0]} image features")
            e = e.masked_scatter(mask.unsqueeze(-1), img.to(e.dtype))
        for i, vec in seg.overrides.items():
            e[i] = vec.to(e.dtype)
        return e

    # -- the decode loop ----------------------------------------------------------------------

    @torch.no_grad()
    def _drive(self, samples: list[_Sample]) -> None:
        if self.options.reprefill:
            for s in samples:
                self._drive_reprefill(s)
            return
        rows = [s for s in samples if not s.done]
        cache = DynamicCache()
        mask: torch.Tensor | None = None
        dev = self.model.device
        while rows:
            segs = [s.pending for s in rows]
            lens = [len(g.ids) for g in segs]
            T, B = max(lens), len(rows)
            d = segs[0].embeds.shape[-1]
            E = torch.zeros(B, T, d, dtype=segs[0].embeds.dtype, device=dev)
            P = torch.zeros(3, B, T, dtype=torch.long, device=dev)
            M = torch.zeros(B, T, dtype=torch.long, device=dev)
            for i, g in enumerate(segs):
                n = lens[i]
                E[i, :n] = g.embeds
                P[:, i, :n] = g.positions.to(dev)
                P[:, i, n:] = g.positions[:, -1:].to(dev)
                M[i, :n] = 1
            mask = M if mask is None else torch.cat([mask, M], dim=1)
            t0 = time.perf_counter()
            hidden = self.model.lm(E, P, mask if not bool(mask.all()) else None, cache, use_cache=True
                                   ).last_hidden_state
            ms = (time.perf_counter() - t0) * 1000
            last = hidden[torch.arange(B, device=dev), torch.tensor(lens, device=dev) - 1]
            decoding = [i for i, s in enumerate(rows) if s.awaiting_control is None]
            # one lm_head call for every sample that picks a token this step
            logits = dict(zip(decoding, self.model.logits(last[decoding]), strict=True)) if decoding else {}
            for i, s in enumerate(rows):
                self._fed(s, segs[i], ms)
                self._advance(s, last[i], logits.get(i))
                self._check_context(s)
            keep = [i for i, s in enumerate(rows) if not s.done]
            if len(keep) < len(rows):
                if keep:
                    idx = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(idx)
                    mask = mask[idx]
                rows = [rows[i] for i in keep]

    def _drive_reprefill(self, s: _Sample) -> None:
        cache = None
        while not s.done:
            seg = s.pending
            t0 = time.perf_counter()
            if cache is None or seg.kind in ("prompt", "observe"):
                # from scratch, as the reference's second round: every embedding recomputed
                allsegs = s.segments + [seg]
                E = torch.cat([self._embed(g) for g in allsegs]).unsqueeze(0)
                P = torch.cat([g.positions for g in allsegs], dim=1).unsqueeze(1).to(self.model.device)
                cache = DynamicCache()
            else:
                E, P = seg.embeds.unsqueeze(0), seg.positions.unsqueeze(1).to(self.model.device)
            hidden = self.model.lm(E, P, None, cache, use_cache=True).last_hidden_state
            self._fed(s, seg, (time.perf_counter() - t0) * 1000)
            self._advance(s, hidden[0, -1])
            self._check_context(s)

    def _check_context(self, s: _Sample) -> None:
        """Finish a sample whose next tokens would not fit the model's context."""
        if s.pending is not None and s.fed + len(s.pending.ids) > self.model.max_positions:
            self._finish(s, FinishReason.CONTEXT_FULL)

    def _fed(self, s: _Sample, seg: Segment, ms: float) -> None:
        s.segments.append(seg)
        s.fed += len(seg.ids)
        s.pending = None
        if seg.kind == "observe" and s.trace.hops:
            s.trace.hops[-1].prefill_ms = ms

    def _advance(self, s: _Sample, h: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """After a forward: ``h`` is the sample's last final-norm state, ``logits`` its next-token
        logits when already computed."""
        if s.awaiting_control is not None:
            branch, s.awaiting_control = s.awaiting_control, None
            self._reencode(s, branch, h)
            return
        if logits is None:
            logits = self.model.logits(h.unsqueeze(0))[0]
        if self.options.record_logits:
            s.logits.append(logits.cpu())
        t = self.policy(s.index, s.generated, logits) if self.policy is not None else None
        self._on_token(s, self._choose(s, logits) if t is None else int(t))

    def _choose(self, s: _Sample, logits: torch.Tensor) -> int:
        if not self.options.do_sample:
            return int(torch.argmax(logits))
        scores = self._warpers(None, logits.unsqueeze(0))
        return int(torch.multinomial(torch.softmax(scores, -1)[0].cpu(), 1, generator=s.gen))

    def _spent(self, s: _Sample, reserve: int = 0) -> bool:
        """Finish the sample when its token budget cannot take ``reserve`` more tokens. Every
        generated or forced token counts, on every path."""
        if len(s.generated) + reserve < self.options.max_new_tokens:
            return False
        self._finish(s, FinishReason.MAX_NEW_TOKENS)
        return True

    def _on_token(self, s: _Sample, t: int) -> None:
        s.generated.append(t)
        s.decoded_since_hop += 1
        ev = s.parser.feed(t) if s.parser is not None else None
        branch = self.start_branch.get(t)
        if branch is not None:
            # a re-encode span opens: feed the start token; its final hidden state is the
            # control signal the forced action token carries (§2.6 step 3, §2.9). The forced
            # tokens (action, and end when dispatching) must fit the budget too.
            if isinstance(ev, ParseError):
                s.trace.events.append({"type": EventType.PARSE_ERROR, **ev.to_dict()})
            if self._spent(s, reserve=1 if s.parser is None else 2):
                return
            s.awaiting_control = branch
            s.pending = self._segment(s, [t], "decode")
            return
        if isinstance(ev, PerceptionCall):
            if self._spent(s):  # no token left to use an observation
                return
            self._on_call(s, ev, closing=t)
            return
        if isinstance(ev, ParseError):
            s.trace.events.append({"type": EventType.PARSE_ERROR, **ev.to_dict()})
            if self.options.on_malformed == "stop":
                self._finish(s, FinishReason.MALFORMED)
                return
        if t in self.eos:
            self._on_answer(s, t)
            return
        if self._spent(s):
            return
        s.pending = self._segment(s, [t], "decode")

    def _finish(self, s: _Sample, reason: FinishReason, error: dict | None = None) -> None:
        if s.parser is not None:
            tail = s.parser.close()
            if tail is not None:
                s.trace.events.append({"type": EventType.PARSE_ERROR, **tail.to_dict()})
        s.done = True
        s.pending = None
        s.trace.finish_reason = FinishReason(reason)
        if error is not None:
            s.trace.error = error

    # -- perception ---------------------------------------------------------------------------

    def _target(self, s: _Sample, target: str | None) -> str:
        """The view id a call runs on. ``target``: "latest" (the last view shown), "root" (the
        original), or None for the loop's default."""
        return s.target if (target or self.options.target) == "latest" else ROOT

    def _context(self, s: _Sample, options: dict, target: str) -> ActionContext:
        # copies: a plugin that paints on its input must not change the sample's images
        root = s.root.copy()
        image = root if target == ROOT else s.image(target).copy()
        return ActionContext(image=image, frame=s.frame(target), root=root, options=options,
                             encoders=self.hub, device=str(self.model.device), _ids=s.ids)

    def _hop(self, s: _Sample, call: ActionCall, node: str | None = None) -> Hop:
        hop = Hop(index=len(s.trace.hops), action=call.action, tokens=list(call.tokens),
                  args=call.args.model_dump(mode="json"), target=call.target, decoded_tokens=s.decoded_since_hop,
                  node=node or s.node)
        s.trace.hops.append(hop)
        s.decoded_since_hop = 0
        return hop

    def _dispatch(self, s: _Sample, call: ActionCall, options: dict, target: str | None = None,
                  node: str | None = None):
        """Run one call on the view it targets; the hop is recorded whatever happens."""
        target = self._target(s, target)
        call = ActionCall(call.action, call.args, target, call.tokens, call.token_ids, call.forced)
        hop = self._hop(s, call, node)
        # shared work: the same call on the same view with the same options runs once per sample
        key = (call.action, call.args.model_dump_json(), target, repr(sorted(options.items())))
        if key in s.observations:
            hop.cached = True
            s.hops += 1
            return s.observations[key], hop
        ctx = self._context(s, options, target)
        before = {k: (v.hits, v.misses) for k, v in self.hub.stats.items()}
        res = dispatch(self.registry.pm, self.registry.action(call.action), call, ctx,
                       timeout_s=self.options.action_timeout_s)
        for k, v in self.hub.stats.items():
            h0, m0 = before.get(k, (0, 0))
            hop.encoder_cache_hits += v.hits - h0
            hop.encoder_cache_misses += v.misses - m0
        hop.dispatch_ms = res.elapsed_ms
        s.hops += 1
        if not res.ok:
            hop.error = res.failure.to_dict()
            reason = FinishReason.ACTION_TIMEOUT if res.failure.timed_out else FinishReason.ACTION_FAILED
            self._finish(s, reason, {"type": reason.value, **res.failure.to_dict()})
            return None, hop
        s.observations[key] = res.observation
        return res.observation, hop

    def _view_blocks(self, s: _Sample, views, hop: Hop | None, target: str | None):
        """Markup, pixels and grids of views shown as images; records them as the sample's views."""
        blocks, images, grids = [], [], []
        for k, view in enumerate(views):
            pv, grid = self._pixels(view.image, view=True)
            n = int(grid.prod()) // self.merge**2
            markup = self.layout.image_markup.replace("<|image_pad|>", "<|image_pad|>" * n, 1)
            blocks.append(markup if len(views) == 1 else f"Region {k}: {markup}\n")  # §1.4
            images.append((pv, grid))
            grids.append(grid.tolist())
            s.views[view.frame.id] = view
            if hop is not None:
                hop.views.append(view.frame.to_dict())
        if hop is not None and views:
            hop.box = views[-1].box.to_dict()
        # one new view becomes "the latest"; several (tiles) leave the target where it was
        if (target or self.options.target) == "latest" and len(views) == 1:
            s.target = views[0].frame.id
        return blocks, images, grids

    def _show_views(self, s: _Sample, call: ActionCall, decision, closing: list[int]) -> None:
        """Dispatch a view action and feed its observation turn after ``closing`` tokens."""
        obs, hop = self._dispatch(s, call, decision.options, decision.target, decision.node)
        if obs is None:
            return
        try:
            blocks, images, grids = self._view_blocks(s, obs, hop, decision.target)
        except PerceiveError as exc:
            hop.error = _err(exc)
            self._finish(s, FinishReason.OBSERVATION_INVALID, _err(exc))
            return
        turn = self.layout.observation_turn(blocks)
        if closing and closing[-1] == self.cfg.special.im_end and turn and turn[0] == self.cfg.special.im_end:
            turn = turn[1:]  # the model already closed its turn
        ids = closing + turn
        try:
            s.pending = self._segment(s, ids, "observe", images=images, grids=grids)
        except PerceiveError as exc:
            hop.error = _err(exc)
            self._finish(s, FinishReason.OBSERVATION_INVALID, _err(exc))
            return
        hop.prefilled_tokens = len(ids)
        s.answer_from = len(s.generated)

    def _budget_event(self, s: _Sample, action: str, tokens, limit: int) -> None:
        s.trace.events.append({"type": EventType.BUDGET_EXHAUSTED, "action": action, "max_hops": limit,
                               "tokens": list(tokens)})

    def _on_call(self, s: _Sample, ev: PerceptionCall, closing: int) -> None:
        action = self.registry.action(ev.action)
        if action.observation != "view":
            s.trace.events.append({"type": EventType.NO_PROJECTOR, "action": ev.action,
                                   "message": f"the model has no branch to show {ev.action!r} features"})
            s.pending = self._segment(s, [closing], "decode")
            return
        decision = self.controller.on_call(self, s, ev)
        if decision.kind == "dispatch":
            self._show_views(s, ev.to_call(), decision, [closing])
        elif decision.kind == "force" and self.registry.action(decision.action).observation == "view":
            self._show_views(s, ActionCall(decision.action, decision.args, forced=True), decision, [closing])
        elif decision.kind == "stop":
            self._finish(s, decision.reason or FinishReason.STOPPED)
        else:
            s.pending = self._segment(s, [closing], "decode")

    def _on_answer(self, s: _Sample, closing: int) -> None:
        decision = self.controller.on_answer(self, s)
        if decision.kind != "force":
            self._finish(s, decision.reason or FinishReason.EOS)
            return
        action = self.registry.action(decision.action)
        if action.observation != "view":
            msg = f"cannot force {decision.action!r} after an answer: only view actions"
            self._finish(s, FinishReason.GRAPH_ERROR, {"type": "graph_error", "message": msg})
            return
        if self._spent(s):
            return
        call = ActionCall(decision.action, decision.args, forced=True)
        self._show_views(s, call, decision, [closing])

    def _reencode(self, s: _Sample, branch, control: torch.Tensor) -> None:
        A, E = branch.action_id, branch.end_id
        s.generated.append(A)
        if s.parser is None:  # no dispatch: only the reference's action-token correction
            if not self._spent(s):
                s.pending = self._segment(s, [A], "force", overrides={0: control})
            return
        ev = s.parser.feed(A)
        s.generated.append(E)
        ev = s.parser.feed(E) or ev
        if isinstance(ev, ParseError):
            s.trace.events.append({"type": EventType.PARSE_ERROR, **ev.to_dict()})
        if self._spent(s):  # the span is complete but no token is left to use an observation
            return
        if not isinstance(ev, PerceptionCall):
            s.pending = self._segment(s, [A, E], "force", overrides={0: control})
            return
        decision, s.forced_reencode = (s.forced_reencode or self.controller.on_call(self, s, ev)), None
        if decision.kind != "dispatch":
            if decision.kind == "stop":
                self._finish(s, decision.reason or FinishReason.STOPPED)
                return
            s.pending = self._segment(s, [A, E], "force", overrides={0: control})
            return
        options = {"encoder": branch.encoder, **decision.options}
        call = ev.to_call()
        if decision.args is not None:
            call = ActionCall(call.action, decision.args, call.target, call.tokens, call.token_ids, True)
        obs, hop = self._dispatch(s, call, options, decision.target, decision.node)
        if obs is None:
            return
        try:
            feats: Features = obs[0]
            rows = self._project(branch, feats, control)
        except (PerceiveError, RuntimeError, ValueError) as exc:
            hop.error = _err(exc)
            self._finish(s, FinishReason.OBSERVATION_INVALID, _err(exc))
            return
        hop.features.append(feats.summary())
        hop.box = feats.box.to_dict()
        pad = self.tokenizer.convert_ids_to_tokens(branch.pad_id)
        vs, ve = (self.tokenizer.convert_ids_to_tokens(i) for i in (self.cfg.special.vision_start,
                                                                    self.cfg.special.vision_end))
        turn = self.layout.observation_turn([vs + pad * rows.shape[0] + ve])
        ids = [A, E] + turn
        overrides = {0: control}
        pads = [i for i, t in enumerate(ids) if t == branch.pad_id]
        overrides.update({i: rows[k] for k, i in enumerate(pads)})
        s.pending = self._segment(s, ids, "observe", overrides=overrides)
        hop.prefilled_tokens = len(ids)
        s.answer_from = len(s.generated)

    def _project(self, branch, feats: Features, control: torch.Tensor) -> torch.Tensor:
        m = self.model
        t = feats.tensor.to(m.device, m.dtype)
        if branch.action == "native":
            rows = m.project("native", t, control.unsqueeze(0), [t.shape[0]])
        else:
            rows = m.project(branch.action, t.unsqueeze(0), control.unsqueeze(0))
        if rows.shape[0] != feats.num_placeholders:
            raise ObservationError(
                f"encoder {feats.encoder!r} gave {rows.shape[0]} projected rows for "
                f"{feats.num_placeholders} placeholders", hint="the encoder's output shape does not fit this projector")
        return rows

    def _answer(self, s: _Sample) -> Answer:
        tok = self.tokenizer
        # an answer is text: a perception token left in it (a malformed span) is a parse_error
        # event in the trace, never part of the answer
        final = [t for t in s.generated[s.answer_from:] if t not in self.eos and t not in self.perception_ids]
        s.trace.answer = tok.decode(final, skip_special_tokens=True).strip()
        s.trace.text = tok.decode(s.generated, skip_special_tokens=False)
        s.trace.generated_tokens = len(s.generated)
        s.trace.total_ms = (time.perf_counter() - s.t0) * 1000
        return Answer(s.trace.answer, s.trace, list(s.generated), s.logits if self.options.record_logits else None)


def _check_question(question) -> None:
    if not isinstance(question, str) or not question.strip():
        got = "no question" if question is None else f"the question {question!r}"
        raise InputError(f"{got}: a question must be non-empty text", hint="ask something about the image")


def _err(exc: BaseException) -> dict:
    d = {"type": type(exc).__name__, "message": getattr(exc, "message", str(exc))}
    if getattr(exc, "hint", None):
        d["hint"] = exc.hint
    return d
