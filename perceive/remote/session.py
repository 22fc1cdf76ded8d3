"""The remote engine: a model served elsewhere (vLLM, SGLang, ``perceive serve``) driven through
its OpenAI-compatible chat endpoint, with the same registry, graph, protocol and trace as a local
run.

The local :class:`~perceive.loop.engine.Engine` interface is token-level (chunks on a KV cache);
a chat endpoint works in turns, so the remote engine sits one level up, at the session's
decisions: per sample, ask the endpoint for the next assistant turn, read its calls with the
model's protocol, let the controller decide, run the action here, and send the observation back
as the next user turn. Two modes (``remote.mode``):

* ``client`` (any endpoint): the actions are declared as tools (the protocol's system turn, and
  ``tools`` for perceive serve); the endpoint only generates. Each turn is asked for raw
  (``skip_special_tokens: false``, stopped at the call's closing tag), so calls are read from the
  text exactly as a local run reads them; structured ``tool_calls`` from an endpoint's tool parser
  are written back as the family's call text. Observations go back as a *user* turn in the
  family's framing (``<tool_response>`` + image), which every engine accepts (several refuse
  images in ``role: tool`` messages).
* ``server`` (``perceive serve`` only): the endpoint runs the whole sample; the answer and the
  trace come back in one response.

Re-encode actions cannot run remotely: their control state is the model's hidden state, which
no chat endpoint returns. A graph that forces one is refused.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image

from perceive.actions import ActionCall
from perceive.control import Dispatch, Finish, Force, Ignore, RunLimits, Stop
from perceive.control import merge_action_options as merge_options
from perceive.encoders import EncoderHub
from perceive.errors import ConfigError, PerceiveError, RemoteError
from perceive.images import as_rgb, load_image
from perceive.loop.observe import Observer, err
from perceive.loop.options import LoopOptions
from perceive.loop.sample import Answer, Sample, answer_each, check_input
from perceive.protocol import ParseError, PerceptionCall
from perceive.remote.endpoint import call_endpoint, data_url, make_client
from perceive.trace import EventType, FinishReason, Trace

_SPECIAL = re.compile(r"<\|[a-z0-9_]+\|>")


class RemoteLoop:
    """A :class:`~perceive.loop.PerceptionLoop` whose model is an endpoint (``remote``: a
    :class:`perceive.config.RemoteConfig`). ``ask``/``ask_batch``/``run`` as the local loop."""

    model = None
    cfg = None
    tokenizer = None

    def __init__(self, remote, registry=None, options: LoopOptions | None = None, graph=None, params=None,
                 encoder_configs: dict | None = None, client=None, graph_name: str | None = None,
                 graph_params: dict | None = None):
        from perceive.plugins import get_registry

        self.remote = remote
        # what a perceive serve endpoint is told to run in mode: server (the graph by name)
        self.graph_name = graph_name or (graph if isinstance(graph, str) else None)
        self.graph_params = dict(graph_params if graph_params is not None else params or {})
        self.registry = registry or getattr(graph, "registry", None) or get_registry()
        options = options or LoopOptions()
        self.options = options
        self.client = client or make_client(remote)
        self.served = remote.model or self._first_model()
        self._check_served()
        self.info = self._served_info()  # perceive serve describes its model; other endpoints do not
        # the options the served model was trained with (perceive serve says), under the run's own
        trained = (self.info or {}).get("action_options") or {}
        self.limits = RunLimits(options.max_hops, merge_options(self.registry, trained, options.action_options))
        self.protocol = self._protocol()
        self.actions = [a for a in self.registry.select(options.actions) if a.grammar is not None]
        self.controller = self._controller(graph, params)
        self.hub = EncoderHub(self.registry.encoder_specs(), encoder_configs or {})
        self.observer = Observer(self)
        self.system, self.tools = self._declaration()

    def _declaration(self) -> tuple[str | None, list[dict] | None]:
        """How the actions are declared: ``(system turn, tools)``. perceive serve declares them itself
        and is told which to hand back (``tools`` by name); an endpoint whose chat template writes a
        tools block (Hermes-style models) gets ``tools``; any other, the protocol's system turn."""
        actions = self.registry.select(self.options.actions)
        if self.info is not None:
            names = self.info.get("tools") or self.protocol.tool_names(self.actions)
            wanted = [n for n in self.protocol.tool_names(self.actions) if n in names] or names
            return self.options.system, [{"type": "function", "function": {"name": n}} for n in wanted]
        schemas = getattr(self.protocol, "tool_schemas", None)
        if schemas is not None and getattr(self.protocol.options, "declare", True):
            return self.options.system, schemas(actions)
        return self.protocol.system_prompt(self.options.system, actions), None

    # -- set-up -------------------------------------------------------------------------------

    def _first_model(self) -> str:
        models = call_endpoint(self.remote, lambda: self.client.models.list())
        ids = [m.id for m in models.data]
        if not ids:
            raise RemoteError(f"{self.remote.url} serves no model (GET /models is empty)")
        self._models = models
        return ids[0]

    def _check_served(self) -> None:
        """A model the endpoint does not list is refused now, not as every sample's error."""
        try:
            listed = getattr(self, "_models", None) or call_endpoint(self.remote, lambda: self.client.models.list())
        except RemoteError as exc:
            if getattr(exc, "status", None) is None:
                raise
            return  # no /models: the first request will tell
        self._models = listed
        ids = [m.id for m in listed.data]
        if ids and self.served not in ids:
            raise RemoteError(f"{self.remote.url} does not serve {self.served!r}; it serves {ids}",
                              hint="set remote.model (or --remote-model) to one of them")

    def _served_info(self) -> dict | None:
        try:
            served = getattr(self, "_models", None) or call_endpoint(self.remote, lambda: self.client.models.list())
        except RemoteError as exc:
            if getattr(exc, "status", None) is None:
                raise  # not there at all
            return None  # an endpoint without /models: the run config must say everything
        return next(((m.model_extra or {}).get("perceive") for m in served.data if m.id == self.served), None)

    def _protocol(self):
        name, options = self.options.protocol, self.options.protocol_options
        info = self.info
        if name == "auto":  # perceive serve says which; another endpoint cannot
            if not info:
                raise ConfigError(f"protocol: auto, but {self.remote.url} does not say which tool-call protocol "
                                  f"{self.served!r} speaks",
                                  hint="set protocol.name in the run config (hermes_json for Qwen2.5-VL/Qwen3-VL "
                                       "with coordinates: relative_1000 for Qwen3-VL, vpt, mini_o3_grounding)")
            name, options = info["protocol"], {**info.get("protocol_options", {}), **options}
        return self.registry.protocol(name).configure(options)

    def _controller(self, graph, params):
        from perceive.graph import run_controller

        return run_controller(graph, self.registry, max_hops=self.options.max_hops, params=params)

    # -- public API ---------------------------------------------------------------------------

    def ask(self, image, question: str) -> Answer:
        return self.run([(load_image(image), question)])[0]

    def ask_batch(self, items: list[tuple[Any, str]]) -> list[Answer]:
        return answer_each(items, self.run)

    def run(self, items: list[tuple[Image.Image, str]], indices: list[int] | None = None) -> list[Answer]:
        """Samples run concurrently (``remote.concurrency`` in flight); the endpoint batches them."""
        indices = list(range(len(items))) if indices is None else indices
        work = list(zip(indices, items, strict=True))
        with ThreadPoolExecutor(max_workers=max(1, min(self.remote.concurrency, len(work) or 1))) as pool:
            return list(pool.map(lambda w: self._one(w[0], *w[1]), work))

    # -- one sample ---------------------------------------------------------------------------

    def finish(self, s: Sample, reason: FinishReason, error: dict | None = None) -> None:
        s.done = True
        s.trace.finish_reason = FinishReason(reason)
        if error is not None:
            s.trace.error = error

    def _one(self, index: int, image: Image.Image, question: str) -> Answer:
        root = as_rgb(image)
        q = question if isinstance(question, str) else ""
        s = Sample(index, root, Trace(question=q, image_size=root.size), None, torch.Generator(), question=q)
        try:
            check_input(question, root.size)
            if self.remote.mode == "server":
                return self._server_side(s)
            self._client_side(s)
        except PerceiveError as exc:
            self.finish(s, FinishReason.ERROR, err(exc))
        s.trace.answer = s.state.get("answer", "")
        s.trace.total_ms = (time.perf_counter() - s.t0) * 1000
        return Answer(s.trace.answer, s.trace, [])

    def _server_side(self, s: Sample) -> Answer:
        o = self.options
        ext = {"max_hops": o.max_hops, "actions": {k: dict(v) for k, v in o.action_options.items()}}
        if self.graph_name:
            ext["graph"] = self.graph_name
            ext["params"] = self.graph_params
        resp = call_endpoint(self.remote, lambda: self.client.chat.completions.create(
            model=self.served, messages=[self._first_user(s, [])], max_tokens=o.max_new_tokens,
            extra_body={"perceive": ext}))
        p = (resp.model_extra or {}).get("perceive") or {}
        if "trace" not in p:
            raise RemoteError(f"{self.remote.url} returned no perceive trace: remote.mode server needs a perceive "
                              "serve endpoint", hint="use remote.mode: client for other endpoints")
        trace = Trace.from_dict(p["trace"])
        return Answer(trace.answer, trace, [])

    def _first_user(self, s: Sample, extra: list[Image.Image]) -> dict:
        parts = [{"type": "image_url", "image_url": {"url": data_url(s.root)}}]
        parts += [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in extra]
        parts.append({"type": "text", "text": s.question})
        return {"role": "user", "content": parts}

    def _client_side(self, s: Sample) -> None:
        o = self.options
        extra: list[Image.Image] = []
        for d in self.controller.start(self.limits, s):  # views the graph shows before the model speaks
            if self.registry.action(d.action).observation != "view":
                raise ConfigError(f"the graph forces {d.action!r} before the model speaks; a remote model can only "
                                  "be shown views there (re-encoding needs the model's hidden state)")
            got, hop = self.observer.run(s, ActionCall(d.action, d.args, forced=True), dict(d.options), d.target,
                                         d.node)
            if got is None:
                return
            extra += self._record_views(s, got, hop)
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [self._first_user(s, extra)]
        turn = ""  # the assistant turn so far (continued after an ignored call)
        while not s.done:
            left = o.max_new_tokens - s.trace.generated_tokens
            if left <= 0:
                self.finish(s, FinishReason.MAX_NEW_TOKENS)
                break
            text, finish = self._generate(s, messages, turn, left)
            turn += text
            frames = s.frames()
            events = self.protocol.calls_in_text(text, frames, self.actions)
            for e in events:
                if isinstance(e, ParseError):
                    s.event(EventType.PARSE_ERROR, **e.to_dict())
            call = next((e for e in events if isinstance(e, PerceptionCall)), None)
            if call is not None:
                s.decoded_since_hop = s.trace.generated_tokens
                decision = self.controller.on_call(self.limits, s, call)
            elif finish == "length":
                self.finish(s, FinishReason.MAX_NEW_TOKENS)
                break
            else:
                answer = turn
                for snippet in s.state.get("unanswered", ()):  # an unanswered call is no part of the answer
                    answer = answer.replace(snippet, "", 1)
                s.state["answer"] = _SPECIAL.sub("", answer).strip()
                decision = self.controller.on_answer(self.limits, s)
            match decision:
                case Dispatch() if call is not None:
                    c = call.to_call()
                    if decision.args is not None:
                        c = ActionCall(c.action, decision.args, c.target, c.tokens, c.token_ids, True)
                    target = call.target or decision.target
                    if self._observe(s, messages, turn, c, dict(decision.options), target, decision.node):
                        turn = ""
                case Force() if self.registry.action(decision.action).observation in ("view", "text"):
                    c = ActionCall(decision.action, decision.args, forced=True)
                    if self._observe(s, messages, turn, c, dict(decision.options), decision.target, decision.node):
                        turn = ""
                case Force():
                    self.finish(s, FinishReason.GRAPH_ERROR, {"type": "graph_error", "message": (
                        f"cannot force {decision.action!r} on a remote model: re-encoding needs its hidden state")})
                case Ignore() | Dispatch() if call is not None:  # unanswered: the model continues its turn
                    s.state.setdefault("unanswered", []).append("".join(call.tokens))
                    continue
                case Stop() | Finish():
                    self.finish(s, decision.reason)
                case _:
                    self.finish(s, FinishReason.EOS)
        s.trace.text = s.state.get("text", "")

    def _generate(self, s: Sample, messages: list[dict], turn: str, left: int) -> tuple[str, str]:
        """The next piece of the assistant turn: ``(raw text, finish_reason)``; the call's closing tag
        is put back when the endpoint stopped on it."""
        msgs = messages + ([{"role": "assistant", "content": turn}] if turn else [])
        body: dict[str, Any] = {"skip_special_tokens": False}
        if turn:
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        stops = self.protocol.stop_strings(self.actions)
        tools = {"tools": self.tools} if self.tools else {}
        resp = call_endpoint(self.remote, lambda: self.client.chat.completions.create(
            model=self.served, messages=msgs, max_tokens=left, stop=stops or None, extra_body=body, **tools))
        choice = resp.choices[0]
        m = choice.message
        text = m.content or ""
        ext = (m.model_extra or {}).get("perceive") or {}
        exact = isinstance(ext.get("text"), str)
        if exact:
            text = ext["text"]  # perceive serve's exact turn, the call written in it
        for tc in [] if exact else (m.tool_calls or []):  # an endpoint's tool parser took the call out of the text
            try:
                arguments = json.loads(tc.function.arguments or "{}")
                text += self.protocol.call_text(tc.function.name, arguments if isinstance(arguments, dict) else {})
            except ValueError:
                s.event(EventType.PARSE_ERROR, kind="invalid_json", message=f"tool call {tc.function.name!r}: its "
                        f"arguments are not JSON: {tc.function.arguments!r}")
            except NotImplementedError as exc:
                raise RemoteError(str(exc), hint="serve the model without a tool-call parser") from None
        text = self.protocol.close_call(text, self.actions)
        usage = resp.usage
        s.trace.generated_tokens += usage.completion_tokens if usage else 0
        if usage and not s.trace.prompt_tokens:
            s.trace.prompt_tokens = usage.prompt_tokens
        s.fed += usage.prompt_tokens if usage else 0
        s.state["text"] = s.state.get("text", "") + text
        return text, choice.finish_reason

    def _record_views(self, s: Sample, views, hop) -> list[Image.Image]:
        self.observer.record_views(s, views, hop)
        return [v.image for v in views]

    def _observe(self, s: Sample, messages: list[dict], turn: str, call: ActionCall, options: dict, target,
                 node) -> bool:
        """Run ``call`` here and append the turn and its observation to ``messages``."""
        got, hop = self.observer.run(s, call, options, target, node)
        if got is None:
            return False
        kind = self.registry.action(call.action).observation
        if kind == "view":
            first = len(s.views) + 1
            parts = self._parts(self._record_views(s, got, hop), None, first)
        elif kind == "text":
            self.observer.record_text(hop, got)
            text = got[0].text if len(got) == 1 else "".join(f"Region {k}: {t.text}\n" for k, t in enumerate(got))
            parts = self._parts([], text, len(s.views) + 1)
        else:
            self.finish(s, FinishReason.GRAPH_ERROR, {"type": "graph_error", "message": (
                f"{call.action!r} returns encoder features: a remote model cannot be shown them")})
            return False
        messages.append({"role": "assistant", "content": turn})
        messages.append({"role": "user", "content": parts})
        return True

    def _parts(self, images: list[Image.Image], text: str | None, first: int) -> list[dict]:
        """The observation's user turn as content parts, in the family's framing."""
        marks = [f"\x00{k}\x00" for k in range(len(images))] if text is None else [text]
        if len(images) > 1:  # the paper's tiles: "Region k: IMAGE"
            marks = [f"Region {k}: {m}\n" for k, m in enumerate(marks)]
        framed = self.protocol.observation_text(_Bare, marks, first)
        framed = "".join(marks) if framed is None else framed
        parts: list[dict] = []
        for k, piece in enumerate(re.split(r"\x00(\d+)\x00", framed)):
            if k % 2:
                parts.append({"type": "image_url", "image_url": {"url": data_url(images[int(piece)])}})
            elif piece:
                parts.append({"type": "text", "text": piece})
        return parts

class _Bare:
    turn_open = ""
    turn_close = ""


def loop_from_config(cfg, registry=None, graph=None, policy=None, model=None):
    """The loop a run config describes: a :class:`RemoteLoop` when it names a ``remote`` endpoint,
    else the local :meth:`PerceptionLoop.from_config <perceive.loop.PerceptionLoop.from_config>`."""
    from perceive.loop import PerceptionLoop
    from perceive.loop.options import options_from_config
    from perceive.plugins import get_registry

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
