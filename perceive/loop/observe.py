"""Running a perception call for a sample and rendering what it returns as the tokens of the
model's next turn: views as images (the paper's image turn, §1.4), features at their branch's
placeholder tokens (§2.5), text as a plain user turn. Hop bookkeeping lives here too: every call
is a hop in the trace, whatever happens to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from PIL import Image

from perceive.actions import ActionCall, ActionContext
from perceive.control import Force
from perceive.dispatch import dispatch
from perceive.encoders import branch_option_problems
from perceive.errors import ConfigError, ObservationError, PerceiveError, trace_error
from perceive.geometry import ROOT
from perceive.loop.engine import Chunk, ChunkKind
from perceive.loop.events import HopStarted, Provenance
from perceive.loop.turn_text import TurnText
from perceive.loop.unencodable import TextRole, note_unencodable
from perceive.observations import Features, Text
from perceive.trace import EventType, FinishReason, Hop

if TYPE_CHECKING:
    from perceive.encoders import EncoderHub
    from perceive.loop.options import LoopOptions
    from perceive.loop.sample import Sample
    from perceive.loop.template import ChatLayout
    from perceive.plugins import Registry
    from perceive.protocols.base import ToolProtocol



def __getattr__(name: str):
    if name == "err":  # its old name, for one release
        import warnings

        warnings.warn("perceive.loop.observe.err is deprecated: use perceive.errors.trace_error", DeprecationWarning,
                      stacklevel=2)
        return trace_error
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Observer:
    """Runs calls and renders observations. It reads only what it is given: the registry and the
    encoder hub (to run actions), the protocol and chat layout (to frame observation turns), the
    run's options (the default target, the call timeout) and the model (image processor,
    projectors, special tokens). A remote engine gives no model and no layout: it only runs calls
    and records their hops (``run``, ``record_views``, ``record_text``)."""

    def __init__(self, registry: Registry, hub: EncoderHub, protocol: ToolProtocol, options: LoopOptions,
                 model=None, layout: ChatLayout | None = None):
        self.registry = registry
        self.hub = hub
        self.protocol = protocol
        self.options = options
        self.model = model
        self.layout = layout
        self.cfg = getattr(model, "config", None)
        self.tokenizer = getattr(model, "tokenizer", None)
        self.merge = getattr(model, "spatial_merge_size", 1)
        self.eos = frozenset({*self.cfg.special.eos, self.cfg.special.im_end}) if self.cfg else frozenset()
        self.perception_ids = self._perception_ids() if model is not None else frozenset()

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

    def showable(self, action: str) -> bool:
        """Whether ``action``'s observation can be shown as a turn (views, text); features only go
        through the model's own re-encode span."""
        return self.registry.action(action).observation in ("view", "text")

    def check_encoders(self) -> None:
        """A re-encode action may use any registered encoder whose output its projector accepts."""
        from perceive.config import encoder_width_problem

        for action, opts in self.options.action_options.items():
            why = encoder_width_problem(action, opts.get("encoder"), self.cfg.branches, self.registry)
            if why:
                raise ConfigError(f"actions.{action}.encoder: {why}")
        # options the model's trained branch would ignore
        names = list(self.hub.configs)
        for (_, i, _), why in branch_option_problems(list(self.hub.configs.values()), self.cfg.branches,
                                                     self.registry):
            raise ConfigError(f"encoders.{names[i]}.options: {why}")

    # -- chunks ---------------------------------------------------------------------------------

    def pixels(self, image: Image.Image, view: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches and ``(t, h, w)`` grid of the first image, or of a view (the model's view
        zoom and processor)."""
        try:
            if view:
                return self.model.view_pixels(image)
            inputs = self.model.image_processor(images=[image], return_tensors="pt")
        except ValueError as exc:  # e.g. an aspect ratio over 200, which Qwen2-VL cannot tile
            raise ObservationError(f"the model's image processor cannot take a {image.width}x{image.height} "
                                   f"image: {exc}", hint="choose a less extreme region") from exc
        return inputs["pixel_values"], inputs["image_grid_thw"][0]

    def seen_size(self, grid: torch.Tensor) -> tuple[int, int]:
        """``(width, height)`` in pixels of an image the processor cut into ``grid`` ``(t, h, w)``
        patches: the size the model saw it at."""
        patch = int(getattr(getattr(self.model.base.config, "vision_config", None), "patch_size", 14))
        g = grid.reshape(-1, 3)[0]
        return int(g[2]) * patch, int(g[1]) * patch

    def feed(self, s: Sample, chunk: Chunk) -> bool:
        """Queue ``chunk`` as the sample's next input, after checking its image tokens against its
        images (a mismatch finishes this sample, not the batch). False when it finished."""
        want = sum(int(g.reshape(-1, 3).prod(-1).sum()) // self.merge**2 for _, g in chunk.images)
        have = chunk.ids.count(self.cfg.special.image_pad) if chunk.images else 0
        if have != want:
            e = ObservationError(f"{have} image tokens for {want} image features")
            if s.trace.hops:
                s.trace.hops[-1].error = trace_error(e)
            s.finish(FinishReason.OBSERVATION_INVALID, trace_error(e))
            return False
        s.pending = chunk
        return True

    # -- running calls --------------------------------------------------------------------------

    def _context(self, s: Sample, options: dict, target: str) -> ActionContext:
        # copies: a plugin that paints on its input must not change the sample's images
        root = s.root.copy()
        image = root if target == ROOT else s.image(target).copy()
        return ActionContext(image=image, frame=s.frame(target), root=root, options=options,
                             encoders=self.hub, device=str(getattr(self.model, "device", "cpu")), _ids=s.ids)

    def _hop(self, s: Sample, call: ActionCall, node: str | None) -> Hop:
        hop = Hop(index=len(s.trace.hops), action=call.action, tokens=list(call.tokens),
                  args=call.args.model_dump(mode="json"), target=call.target, decoded_tokens=s.decoded_since_hop,
                  node=node or s.node)
        s.trace.hops.append(hop)
        s.decoded_since_hop = 0
        s.close_hop()  # a forced first view's hop ends where the next begins
        s.outbox.append(HopStarted(s.index, hop.index, hop.action, hop.args, hop.target, hop.node))
        s.open_hop = hop
        return hop

    def target_of(self, s: Sample, want: str | None) -> str:
        """The view id a call runs on: ``want`` is "latest", "root", a view a call named, or None
        (the run's ``target`` option)."""
        want = want or self.options.target
        return s.target if want == "latest" else (want if want in s.views else ROOT)

    def run(self, s: Sample, call: ActionCall, options: dict, target: str | None, node: str | None):
        """Run one call on the view it targets: ``(observation or None, hop)``. The hop is recorded
        whatever happens; a failure finishes the sample."""
        target = self.target_of(s, target)
        call = ActionCall(call.action, call.args, target, call.tokens, call.token_ids, call.forced)
        hop = self._hop(s, call, node)
        s.hops += 1
        # shared work: the same call on the same view with the same options runs once per sample
        key = (call.action, call.args.model_dump_json(), target, repr(sorted(options.items())))
        if key in s.observations:
            hop.cached = True
            return s.observations[key], hop
        before = {k: (v.hits, v.misses) for k, v in self.hub.stats.items()}
        res = dispatch(self.registry.pm, self.registry.action(call.action), call, self._context(s, options, target),
                       timeout_s=self.options.action_timeout_s)
        for k, v in self.hub.stats.items():
            h0, m0 = before.get(k, (0, 0))
            hop.encoder_cache_hits += v.hits - h0
            hop.encoder_cache_misses += v.misses - m0
        hop.dispatch_ms = res.elapsed_ms
        if not res.ok:
            hop.error = res.failure.to_dict()
            reason = FinishReason.ACTION_TIMEOUT if res.failure.timed_out else FinishReason.ACTION_FAILED
            s.finish(reason, {"type": reason.value, **res.failure.to_dict()})
            return None, hop
        s.observations[key] = res.observation
        return res.observation, hop

    def _fail(self, s: Sample, hop: Hop, exc: PerceiveError) -> None:
        hop.error = trace_error(exc)
        s.finish(FinishReason.OBSERVATION_INVALID, trace_error(exc))

    # -- views ----------------------------------------------------------------------------------

    def _view_blocks(self, s: Sample, views, hop: Hop):
        """Markup and pixels of views shown as images; records them as the sample's views."""
        blocks, images = [], []
        layout = self.layout
        for k, view in enumerate(views):
            pv, grid = self.pixels(view.image, view=True)
            n = int(grid.prod()) // self.merge**2
            markup = layout.image_markup.replace("<|image_pad|>", "<|image_pad|>" * n, 1)
            blocks.append(markup if len(views) == 1 else f"Region {k}: {markup}\n")  # §1.4
            images.append((pv, grid))
            s.seen[view.frame.id] = self.seen_size(grid)
        self.record_views(s, views, hop)
        return blocks, images

    def record_views(self, s: Sample, views, hop: Hop) -> None:
        """``views`` become the sample's (their frames on the hop); one new view becomes "the
        latest", several (tiles) leave it where it was. Which view the call ran on does not
        matter: a tool call that names the original (``img_idx`` 0) still makes its crop the latest
        view, which a later ``target: latest`` node reads."""
        for view in views:
            s.views[view.frame.id] = view
            hop.views.append(view.frame.to_dict())
        if views:
            hop.box = views[-1].box.to_dict()
        if len(views) == 1:
            s.target = views[0].frame.id

    def first_turn_views(self, s: Sample, d: Force):
        """A view the controller forces before the model speaks: ``(markup blocks, images)`` for
        the first user turn, or None when the call failed (the sample is finished)."""
        obs, hop = self.run(s, ActionCall(d.action, d.args, forced=True), dict(d.options), d.target, d.node)
        if obs is None:
            return None
        try:
            return self._view_blocks(s, obs, hop)
        except PerceiveError as exc:
            self._fail(s, hop, exc)
            return None

    def first_turn_text(self, s: Sample, d: Force):
        """A text action the controller forces before the model speaks: ``(text blocks, [])`` for
        the first user turn (none when the model was not trained to read it: a ``not_shown``
        event), or None when the call failed (the sample is finished)."""
        obs, hop = self.run(s, ActionCall(d.action, d.args, forced=True), dict(d.options), d.target, d.node)
        if obs is None:
            return None
        blocks = self._text_blocks(s, d.action, obs, hop)
        # before the question: each block on its own line
        return [b if b.endswith("\n") else b + "\n" for b in blocks or []], []

    def show_views(self, s: Sample, call: ActionCall, options: Mapping, target: str | None, node: str | None,
                   closing: list[int]) -> None:
        """Run a view call and queue its observation turn after the ``closing`` tokens."""
        obs, hop = self.run(s, call, dict(options), target, node)
        if obs is None:
            return
        try:
            blocks, images = self._view_blocks(s, obs, hop)
        except PerceiveError as exc:
            self._fail(s, hop, exc)
            return
        self._queue_observation(s, hop, self.observation_ids(blocks, len(s.views) - len(blocks) + 1, closing), images,
                                len(closing))

    def observation_ids(self, blocks: list[str], first: int, closing: list[int]) -> list[int]:
        """``closing``, then the observation turn holding ``blocks`` as the model's family was trained
        to see it (vpt: the paper's image turn); ``first`` numbers its first view (observation_N)."""
        turn = self.protocol.observation_turn(self.layout, blocks, first)
        im_end = self.cfg.special.im_end
        if closing and closing[-1] == im_end and turn and turn[0] == im_end:
            turn = turn[1:]  # the model already closed its turn
        return closing + turn

    def _queue_observation(self, s: Sample, hop: Hop, ids: list[int], images=(), closing: int = 0) -> None:
        """Queue ``ids`` (the ``closing`` tokens the model already wrote, then the observation turn)."""
        if self.feed(s, Chunk(ids, ChunkKind.OBSERVE, list(images))):
            hop.prefilled_tokens = len(ids)
            s.tokens(ids[closing:], Provenance.OBSERVATION, images=images)
            self.new_turn(s)

    # -- text -----------------------------------------------------------------------------------

    def plain(self, text: str) -> str:
        """``text`` as words only: a special or added token's literal in it (``<|im_end|>``, a span
        token an image might spell out) gets a space after its first character, so that what a tool
        read can never close a turn or open a call."""
        tok = self.tokenizer
        if not hasattr(self, "_literals"):
            added = tok.get_added_vocab() if hasattr(tok, "get_added_vocab") else {}
            self._literals = sorted({w for w in (*added, *getattr(tok, "all_special_tokens", ())) if len(w) > 1},
                                    key=len, reverse=True)
        hit = True
        while hit:
            hit = False
            for w in self._literals:
                if w in text:
                    text, hit = text.replace(w, f"{w[0]} {w[1:]}"), True
        return text

    def show_text(self, s: Sample, call: ActionCall, options: Mapping, target: str | None, node: str | None,
                  closing: list[int]) -> None:
        """Run a text call and queue its observation turn after the ``closing`` tokens: a plain user
        turn holding the text (``Region k: `` before each when a call gives several). A model whose
        perceive.json ``views`` (what it was trained to read) leaves the action out is not shown the
        text: it stays in the hop, with a ``not_shown`` event."""
        obs, hop = self.run(s, call, dict(options), target, node)
        if obs is None:
            return
        blocks = self._text_blocks(s, call.action, obs, hop)
        if blocks is None:
            if closing and closing[-1] in self.eos:
                s.finish(FinishReason.EOS)  # after an answer: the answer stands
            else:
                s.pending = Chunk(closing, ChunkKind.DECODE)  # after a call: as if it went unanswered
            return
        # the text in the family's own tool-response turn (a plain user turn for vpt)
        ids = self.observation_ids(blocks, len(s.views) + 1, closing)
        note_unencodable(s, self.tokenizer, ids, ((TextRole.OBSERVATION, b) for b in blocks))
        self._queue_observation(s, hop, ids, closing=len(closing))

    @staticmethod
    def record_text(hop: Hop, texts) -> None:
        """Text observations on the hop: their summaries, the last one's box."""
        hop.text += [t.summary() for t in texts]
        hop.box = texts[-1].box.to_dict()

    def _text_blocks(self, s: Sample, action: str, texts: tuple[Text, ...], hop: Hop) -> list[str] | None:
        """Record ``texts`` on the hop and return the blocks of a text turn (``Region k: `` before
        each when a call gives several), or None when the model lists what it was trained to read
        (perceive.json ``views``) and not this: the text stays in the trace, with a ``not_shown``
        event."""
        self.record_text(hop, texts)
        views = self.cfg.views
        if views is not None and action not in views:
            s.event(EventType.NOT_SHOWN, action=action,
                    message=f"the model was not trained to read {action!r} text turns (perceive.json views: "
                            f"{views}): the text is in the trace, not shown")
            return None
        return [self.plain(t.text) if len(texts) == 1 else f"Region {k}: {self.plain(t.text)}\n"
                for k, t in enumerate(texts)]

    # -- features -------------------------------------------------------------------------------

    def show_features(self, s: Sample, branch, call: ActionCall, options: Mapping, target: str | None,
                      node: str | None, control: torch.Tensor) -> None:
        """Run a re-encode call, condition its features on ``control`` (the span's start-token
        state, ``(d,)``) and queue them at the branch's placeholder tokens."""
        A, E = branch.action_id, branch.end_id
        options = {"encoder": branch.encoder, **options}
        obs, hop = self.run(s, call, options, target, node)
        if obs is None:
            return
        try:
            feats: Features = obs[0]
            rows = self._project(branch, feats, control)
        except (PerceiveError, RuntimeError, ValueError) as exc:
            self._fail(s, hop, exc if isinstance(exc, PerceiveError) else ObservationError(str(exc)))
            return
        hop.features.append(feats.summary())
        hop.box = feats.box.to_dict()
        tok = self.tokenizer
        pad = tok.convert_ids_to_tokens(branch.pad_id)
        vs, ve = (tok.convert_ids_to_tokens(i) for i in (self.cfg.special.vision_start, self.cfg.special.vision_end))
        ids = [A, E] + self.layout.observation_turn([vs + pad * rows.shape[0] + ve])
        overrides = {0: control}
        pads = [i for i, t in enumerate(ids) if t == branch.pad_id]
        overrides.update({i: rows[k] for k, i in enumerate(pads)})
        s.pending = Chunk(ids, ChunkKind.OBSERVE, overrides=overrides)
        hop.prefilled_tokens = len(ids)
        # the span's action and end tokens are forced, emitted already
        s.tokens(ids[2:], Provenance.OBSERVATION, features=[(branch.action, feats.tensor)])
        self.new_turn(s)

    def new_turn(self, s: Sample) -> None:
        """A new assistant turn starts after what is queued: its text is streamed afresh."""
        s.answer_from = len(s.generated)
        if s.stream_text and self.tokenizer is not None:  # nobody reads it otherwise: no decoding per token
            tok = self.tokenizer
            s.turn_text = TurnText(lambda ids: tok.decode(ids, skip_special_tokens=True),
                                   self.perception_ids | self.eos, getattr(self.protocol, "open_tag", ""))

    def _project(self, branch, feats: Features, control: torch.Tensor) -> torch.Tensor:
        """The branch's projector conditions ``feats`` on ``control``: ``(num_placeholders, d)``."""
        return self.model.project_features(branch.action, feats, control)
