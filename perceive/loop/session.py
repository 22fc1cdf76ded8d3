"""The perception session: ``PerceptionLoop``, the public face of the local loop.

It builds each sample's prompt (the first user turn, views a graph forces before the model
speaks, earlier turns a client ran), opens batches on an engine, and hands out the samples'
events (:mod:`perceive.loop.events`). What happens after each engine step (the next token, a
closed call, the controller's decision) is :mod:`perceive.loop.stepper`; running calls and
rendering observations, :mod:`perceive.loop.observe`; joining and leaving a running batch,
:mod:`perceive.loop.continuous_batching`. Only new tokens are ever fed, and encoder features are
cached per image (``EncoderHub``). A controller (``perceive.control``) decides at each call and
answer: by default the run's graph.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from perceive.control import Controller, Dispatch, RunLimits
from perceive.control import merge_action_options as merge_options
from perceive.encoders import EncoderHub
from perceive.errors import ConfigError, InputError, PerceiveError, trace_error
from perceive.geometry import ROOT
from perceive.graph import CompiledGraph
from perceive.images import as_rgb, load_image
from perceive.loop.continuous_batching import Batch
from perceive.loop.engine import Chunk, ChunkKind, Engine, NativeEngine, ReprefillEngine
from perceive.loop.events import Event, Finished, Provenance
from perceive.loop.observe import Observer
from perceive.loop.options import LoopOptions, options_from_config
from perceive.loop.replay import replay
from perceive.loop.sample import Answer, Sample, Turn, answer_each, check_input
from perceive.loop.sampling import Sampler
from perceive.loop.stepper import Policy, Stepper
from perceive.loop.template import ChatLayout
from perceive.loop.unencodable import TextRole, note_unencodable
from perceive.protocols.codec import codec_from_tokenizer
from perceive.protocols.detect import choose_protocol
from perceive.trace import EventType, FinishReason, Trace


class PerceptionLoop:
    """Runs a VPT model with perception dispatch. One loop is one session: its encoder cache is
    shared by every sample it runs.

    ``graph`` (a shipped name, a YAML path, a dict or a compiled graph; default ``free_choice``
    with ``max_hops`` from ``options``) decides at each call, unless a ``controller`` is given.
    ``policy(sample_index, generated_ids, logits) -> token id | None`` overrides the model's
    choice (constrained decoding, scripted spans in tests). ``engine(model)`` builds the engine
    of each run (default :class:`NativeEngine`, or :class:`ReprefillEngine` with
    ``options.reprefill``)."""

    def __init__(self, model, registry=None, options: LoopOptions | None = None, hub: EncoderHub | None = None,
                 encoder_configs: dict | None = None, policy: Policy | None = None,
                 controller: Controller | None = None, graph=None, params: dict | None = None,
                 engine: Callable[[Any], Engine] | None = None):
        from perceive.plugins import get_registry

        self.model = model
        self.engine = engine
        # a compiled graph brings the registry it was validated against
        self.registry = registry or getattr(graph, "registry", None) or get_registry()
        options = options or LoopOptions()
        # the options the model was trained with (a region margin, ...), under the run's own
        merged = merge_options(self.registry, model.config.action_defaults, options.action_options)
        self.options = options.replace(action_options=merged)
        self.graph = graph  # what the run's controller was built from (None: the default graph)
        self.controller = controller or self._graph_controller(graph, params)
        self.limits = RunLimits(self.options.max_hops, self.options.action_options)
        self.hub = hub or EncoderHub(self.registry.encoder_specs(), encoder_configs or {}, model=model)
        self.cfg = model.config
        self.tokenizer = model.tokenizer
        # the tool-call protocol the model speaks: how calls are read, declared and answered
        # (``auto``: the one its files declare, perceive.protocols.detect)
        self.protocol = choose_protocol(self.registry, self.options.protocol, self.options.protocol_options, model)
        system = self.protocol.system_prompt(self.options.system, self.registry.select(self.options.actions))
        self.layout = ChatLayout(self.tokenizer, system) if self.tokenizer is not None else None
        self.actions = [a for a in self.registry.select(self.options.actions) if a.grammar is not None]
        self.observer = Observer(self.registry, self.hub, self.protocol, self.options, model, self.layout)
        self.observer.check_encoders()
        o = self.options
        self.stepper = Stepper(self.observer, o, self.controller, self.limits,
                               Sampler(o.do_sample, o.temperature, o.top_k, o.top_p), model.max_positions, policy)

    @property
    def policy(self) -> Policy | None:
        return self.stepper.policy

    @policy.setter
    def policy(self, policy: Policy | None) -> None:
        self.stepper.policy = policy

    def _graph_controller(self, graph, params, max_hops: int | None = None):
        from perceive.graph import run_controller

        hops = self.options.max_hops if max_hops is None else max_hops
        return run_controller(graph, self.registry, max_hops=hops, params=params, model=self.model)

    @classmethod
    def from_config(cls, config, registry=None, policy=None, model=None, graph=None) -> PerceptionLoop:
        """The loop a run config (:class:`perceive.config.PerceiveConfig`, or a YAML path)
        describes. Names are checked against the registry, then the graph is compiled (``graph``
        overrides the config's), then the model loads (unless given) and an encoder whose
        features do not fit its branch is refused, naming the config's file and line."""
        from perceive.config import PerceiveConfig, encoder_fit_problems, load_config
        from perceive.graph import compile_graph
        from perceive.model import load_model
        from perceive.plugins import get_registry

        registry = registry or get_registry()
        cfg = config if isinstance(config, PerceiveConfig) else load_config(config, registry=registry)
        cfg.refuse(cfg.check_names(registry))
        graph = graph or compile_graph(cfg.graph, registry=registry, params=cfg.graph_params())
        if model is None:
            if cfg.model.path is None:
                raise ConfigError(f"{cfg.source}: model.path is not set",
                                  hint="point it at a local model folder (perceive never downloads), or pass --model")
            model = load_model(cfg.model.path, device=cfg.device, dtype=None if cfg.dtype == "auto" else cfg.dtype)
        cfg.refuse([cfg.render(*p) for p in encoder_fit_problems(cfg, model.config.branches, registry)])
        return cls(model, registry=registry, options=options_from_config(cfg), encoder_configs=cfg.encoder_configs(),
                   policy=policy, graph=graph)

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
        return answer_each(items, self.run)

    def run(self, items: list[tuple[Image.Image, str]], indices: list[int] | None = None) -> list[Answer]:
        """Run decoded images together. ``indices`` are the samples' positions in the caller's
        batch (they seed sampling and key the policy); default 0..n-1."""
        indices = list(range(len(items))) if indices is None else indices
        done = {ev.sample: Answer.from_event(ev) for ev in self.stream(items, indices, text=False)
                if isinstance(ev, Finished)}
        return [done[i] for i in indices]

    def stream(self, items: list[tuple[Any, str]], indices: list[int] | None = None, *,
               text: bool = True) -> Iterator[Event]:
        """The events of ``(image, question)`` pairs run together (:mod:`perceive.loop.events`), as
        they happen. An image is what :meth:`ask` takes (a path, bytes, a PIL image). Each sample's
        ``sample`` is its index (``indices``, default 0..n-1), and its ``Finished`` event comes last;
        a sample whose image cannot be read finishes at once with the error in its trace.
        ``text=False``: ``TokenDelta.text`` stays empty (no decoding per token; the answer is in
        ``Finished``)."""
        if self.layout is None:
            raise PerceiveError("this model has no tokenizer", hint="load a checkpoint that ships one")
        indices = list(range(len(items))) if indices is None else indices
        batch = self.batch()
        for i, (img, q) in zip(indices, items, strict=True):
            try:
                img = load_image(img)
            except PerceiveError as exc:
                trace = Trace(question=q if isinstance(q, str) else "", error=trace_error(exc),
                              finish_reason=FinishReason.ERROR)
                yield Finished(i, "", FinishReason.ERROR, trace)
                continue
            yield from batch.add(self.start(img, q, i, stream_text=text))
        with torch.no_grad():
            while len(batch):
                yield from batch.step()

    def generate_ids(self, prompt_ids: list[int], pixel_values=None, image_grid_thw=None,
                     max_new_tokens: int = 16) -> list[int]:
        """Generate from explicit ids (images already expanded to pads), without dispatch: the
        reference's own generation (the action token after a start token is forced and carries
        the control state). Returns prompt and new ids."""
        # no parser: nothing is dispatched and an end token ends the sample (no controller)
        s = Sample(0, Image.new("RGB", (1, 1)), Trace(), None, torch.Generator().manual_seed(self.options.seed),
                   max_new_tokens=max_new_tokens)
        images = [] if pixel_values is None else [(pixel_values, image_grid_thw)]
        s.pending = Chunk(list(prompt_ids), ChunkKind.PROMPT, images)
        s.trace.prompt_tokens = len(prompt_ids)
        # a prompt that ends with a re-encode start token: the next token is forced
        s.awaiting_control = self.stepper.start_branch.get(int(prompt_ids[-1]))
        s.pending.logits = s.awaiting_control is None
        batch = self.batch()
        batch.add(s)
        with torch.no_grad():
            while len(batch):
                batch.step()
        return list(prompt_ids) + s.generated

    # -- set-up -----------------------------------------------------------------------------

    def start(self, image: Image.Image, question: str, index: int = 0, *, history: Sequence[Turn] = (),
              client_tools: bool | frozenset[str] = False, max_new_tokens: int | None = None, graph=None,
              params: dict | None = None, max_hops: int | None = None,
              action_options: dict[str, dict] | None = None, stream_text: bool = False) -> Sample:
        """A new sample, ready to :meth:`batch`-step: its prompt is built and any forced first
        views have run. ``history``: earlier assistant turns that ended in calls, and what each call
        returned (a client that ran its tools itself); they are prefilled with the prompt.
        ``client_tools``: the sample finishes with ``tool_calls`` at the model's next call, which
        goes back to the caller (``Sample.calls``) instead of running; a set of tool names: only
        calls to those (another call goes unanswered, with a ``graph`` event). ``graph``, ``params``,
        ``max_hops``, ``action_options``: this sample's own, over the run's (a graph is compiled
        once per name and params, and checked against the model). ``stream_text``: its
        ``TokenDelta`` events carry the visible text as it is written. Problems finish the sample
        (see its trace), never raise; a graph that does not compile raises ``GraphError``."""
        controller = limits = None
        if graph is not None or params or max_hops is not None or action_options:
            hops = self.options.max_hops if max_hops is None else max_hops
            limits = RunLimits(hops, merge_options(self.registry, self.options.action_options, action_options or {}))
            if graph is not None or params or max_hops is not None:
                controller = self.controller_for(graph, params, hops)
        s = self._new_sample(index, image, question, history, bool(client_tools), controller, limits, stream_text)
        s.max_new_tokens = max_new_tokens
        s.tools = frozenset(client_tools) if isinstance(client_tools, frozenset | set) else None
        return s

    def controller_for(self, graph=None, params: dict | None = None, max_hops: int | None = None):
        """The controller of ``graph`` (None: the run's) with ``params`` and hop budget ``max_hops``
        (default: the run's), compiled and checked against the model once per (graph, params,
        budget). Raises
        ``GraphValidationError``, ``ConfigError`` (a graph the model cannot run) or
        ``FileNotFoundError``."""
        hops = self.options.max_hops if max_hops is None else max_hops
        graph = self.graph if graph is None else graph
        if isinstance(graph, CompiledGraph) and (params or max_hops is not None):
            # a precompiled graph (the run's) with a request's own params or budget: compiled over them
            graph = graph.with_params({**(params or {}), **({"max_hops": max_hops} if max_hops is not None else {})})
        key = (graph if isinstance(graph, str) else id(graph), json.dumps(params or {}, sort_keys=True, default=str),
               hops)
        cache = self.__dict__.setdefault("_controllers", {})
        if key not in cache:
            cache[key] = self._graph_controller(graph, params, hops)
        return cache[key]

    def _new_sample(self, index: int, image: Image.Image, question: str, history: Sequence[Turn] = (),
                    client_tools: bool = False, controller=None, limits=None, stream_text: bool = False) -> Sample:
        root = as_rgb(image)
        parser = (self.protocol.reader(self.actions, codec_from_tokenizer(self.tokenizer),
                                       lambda: s.frames())
                  if self.options.dispatch else None)
        q = question if isinstance(question, str) else ""
        s = Sample(index, root, Trace(question=q, image_size=root.size), parser,
                   torch.Generator().manual_seed(self.options.seed + index), question=q, client_tools=client_tools,
                   controller=controller, limits=limits, stream_text=stream_text)
        try:
            check_input(question, root.size)
            pv, grid = self.observer.pixels(root)
            s.seen[ROOT] = self.observer.seen_size(grid)
        except PerceiveError as exc:
            s.fail(FinishReason.ERROR, exc)
            return s
        first = self._first_calls(s)
        if first is None:
            return s
        blocks, images, reencode = first
        ids = self.layout.prompt(s.question, int(grid.prod()) // self.model.spatial_merge_size**2, blocks)
        # a character the tokenizer cannot encode is read as its unknown token: say which (an event)
        note_unencodable(s, self.tokenizer, ids, [(TextRole.SYSTEM, self.layout.system),
                                                  *((TextRole.OBSERVATION, b) for b in blocks),
                                                  (TextRole.QUESTION, s.question)])
        images = [(pv, grid), *images]
        for turn in history:
            done = replay(self.observer, s, turn, s.limits or self.limits)
            if done is None:
                return s
            ids += done[0]
            images += done[1]
        self._queue_prompt(s, ids, images, reencode)
        return s

    def _first_calls(self, s: Sample):
        """Run the calls the controller makes before the model speaks: views and text join the
        first user turn, a re-encode opens the first assistant turn. ``(markup blocks, images,
        the branch to open or None)``, or None when the sample finished."""
        blocks, images, reencode = [], [], None
        for d in (s.controller or self.controller).start(s.limits or self.limits, s):
            if not self.options.dispatch:
                s.event(EventType.GRAPH, message=f"dispatch is off: the forced {d.action!r} call did not run")
                continue
            kind = self.registry.action(d.action).observation
            if kind in ("view", "text"):
                shown = (self.observer.first_turn_views if kind == "view" else self.observer.first_turn_text)(s, d)
                if shown is None:
                    return None
                blocks += shown[0]
                images += shown[1]
                continue
            reencode = next((b for b in self.cfg.branches.values() if b.action == d.action), None)
            if reencode is None:
                msg = f"the model has no {d.action!r} branch to force"
                s.finish(FinishReason.GRAPH_ERROR, {"type": "graph_error", "message": msg})
                return None
            s.forced_reencode = Dispatch(options=d.options, target=d.target, args=d.args, node=d.node)
        return blocks, images, reencode

    def _queue_prompt(self, s: Sample, ids: list[int], images: list, reencode) -> None:
        """Queue the prompt ``ids`` (then ``reencode``'s start token, forced), or refuse a prompt past
        the model's context before any forward: there the model only answers noise."""
        limit = self.model.max_positions
        if len(ids) + (reencode is not None) >= limit:
            s.fail(FinishReason.ERROR, InputError(
                f"the prompt is {len(ids)} tokens (image tokens included) but the model's context "
                f"(max_position_embeddings) is {limit}",
                hint="shorten the question, or use a smaller image"))
            return
        s.tokens(ids, Provenance.PROMPT, images=images)
        if reencode is not None:
            ids = ids + [reencode.start_id]
            s.generated.append(reencode.start_id)
            s.tokens([reencode.start_id], Provenance.FORCED)
            if s.parser is not None:
                s.parser.feed(reencode.start_id)
            s.awaiting_control = reencode
        s.trace.prompt_tokens = len(ids)
        if self.observer.feed(s, Chunk(ids, ChunkKind.PROMPT, images, logits=reencode is None)):
            self.observer.new_turn(s)

    # -- the decode loop ----------------------------------------------------------------------

    def _engine(self) -> Engine:
        if self.engine is not None:
            return self.engine(self.model)
        return ReprefillEngine(self.model) if self.options.reprefill else NativeEngine(self.model)

    def batch(self, cap: int | None = None) -> Batch:
        """An open batch on a fresh engine: add samples (:meth:`start`), step it, cancel samples
        (``perceive serve`` keeps one running); each step returns the samples' events. ``cap``:
        samples running at once (default ``max_batch_size``; 1 for the reprefill baseline, which
        runs one at a time as the reference does)."""
        cap = 1 if self.options.reprefill else (cap or self.options.max_batch_size)
        return Batch(self.stepper, self._engine(), cap)
