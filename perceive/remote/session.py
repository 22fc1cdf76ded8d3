"""The remote engine: a model served elsewhere (vLLM, SGLang, ``perceive serve``) driven through
its OpenAI-compatible chat endpoint, with the same registry, graph, protocol, decision rule, trace
and events as a local run.

A chat endpoint works in turns, not token chunks, so the sample runs in
:class:`~perceive.loop.TurnSession` (the session one level up, at the controller's decisions),
over this module's backend: the endpoint asked for the next assistant turn. Two modes
(``remote.mode``):

* ``client`` (any endpoint): the actions are declared as tools (the protocol's system turn, and
  ``tools`` for perceive serve); the endpoint only generates. Each turn is asked for raw
  (``skip_special_tokens: false``, stopped at the call's closing tag), so calls are read from the
  text exactly as a local run reads them; structured ``tool_calls`` from an endpoint's tool parser
  are written back as the family's call text. Observations go back as a *user* turn in the
  family's framing (``<tool_response>`` + image), which every engine accepts (several refuse
  images in ``role: tool`` messages).
* ``server`` (``perceive serve`` only): the endpoint runs the whole sample; the answer and the
  trace come back in one response.

``remote.url`` may list several endpoints serving the same model: each sample runs all its turns
on one of them (:mod:`perceive.remote.balance`), and its trace's ``endpoint`` says which.

Re-encode actions cannot run remotely: their control state is the model's hidden state, which
no chat endpoint returns. A graph that forces one is refused.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from perceive.control import RunLimits
from perceive.control import merge_action_options as merge_options
from perceive.encoders import EncoderHub
from perceive.errors import ConfigError, RemoteError
from perceive.images import load_image
from perceive.loop import Answer, Finished, Generated, LoopOptions, TurnSession, answer_each
from perceive.remote.balance import Balancer
from perceive.remote.endpoint import Endpoint, data_url


class RemoteLoop:
    """A :class:`~perceive.loop.PerceptionLoop` whose model is an endpoint, or several serving the
    same model (``remote``: a :class:`perceive.config.RemoteConfig`). ``ask``/``ask_batch``/``run``
    as the local loop. ``client``: an ``openai.OpenAI``-like client for every endpoint, or a list
    of them, one per URL (tests); unset, each endpoint gets its own."""

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
        clients = list(client) if isinstance(client, (list, tuple)) else [client] * len(remote.urls)
        self.endpoints = [Endpoint(remote, url, c) for url, c in zip(remote.urls, clients, strict=True)]
        self.balancer = Balancer(self.endpoints)
        # the served model's id, and what perceive serve says of it (other endpoints say nothing)
        self.served, self.info = self._served()
        # the options the served model was trained with (perceive serve says), under the run's own
        trained = (self.info or {}).get("action_options") or {}
        self.limits = RunLimits(options.max_hops, merge_options(self.registry, trained, options.action_options))
        self.protocol = self._protocol()
        self.actions = [a for a in self.registry.select(options.actions) if a.grammar is not None]
        self.controller = self._controller(graph, params)
        self.hub = EncoderHub(self.registry.encoder_specs(), encoder_configs or {})
        self.system, self.tools = self._declaration()
        # one session per endpoint (its backend holds the client); they share everything else
        self.sessions = [TurnSession(_ChatBackend(self, ep), self.registry, self.hub, self.protocol, self.controller,
                                     self.limits, options, whole=remote.mode == "server") for ep in self.endpoints]

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

    def _served(self) -> tuple[str, dict | None]:
        """``(model id, perceive serve's description of it or None)``, checked on every endpoint
        now, not as every sample's error: each must list the model (when it has ``GET /models``)
        and describe it alike. One that cannot be reached refuses the run."""
        first = self.endpoints[0]
        listed = None if self.remote.model else first.call(lambda c: c.models.list())
        served = self.remote.model or self._first_model(first, listed)
        infos = [self._served_info(ep, served, listed if ep is first else None) for ep in self.endpoints]
        for ep, info in zip(self.endpoints[1:], infos[1:], strict=True):
            if info != infos[0]:
                raise RemoteError(f"{ep.url} and {first.url} describe {served!r} differently (GET /models): they "
                                  "serve different models under one name, or one is perceive serve and one not",
                                  hint="list in remote.url only endpoints serving the same model the same way")
        return served, infos[0]

    @staticmethod
    def _first_model(ep: Endpoint, listed) -> str:
        ids = [m.id for m in listed.data]
        if not ids:
            raise RemoteError(f"{ep.url} serves no model (GET /models is empty)")
        return ids[0]

    def _served_info(self, ep: Endpoint, served: str, listed=None) -> dict | None:
        """What ``ep`` says of ``served`` (perceive serve's ``perceive`` entry); a model it does not
        list is refused."""
        listed = ep.models() if listed is None else listed
        if listed is None:
            return None  # an endpoint without /models: the run config must say everything
        ids = [m.id for m in listed.data]
        if ids and served not in ids:
            if len(self.endpoints) == 1:
                hint = "set remote.model (or --remote-model) to one of them"
            else:
                hint = (f"every endpoint of remote.url must serve the same model ({served!r}: "
                        + ("remote.model" if self.remote.model else f"{self.endpoints[0].url}'s first") +
                        "); list only those that do")
            raise RemoteError(f"{ep.url} does not serve {served!r}; it serves {ids}", hint=hint)
        return next(((m.model_extra or {}).get("perceive") for m in listed.data if m.id == served), None)

    def _protocol(self):
        name, options = self.options.protocol, self.options.protocol_options
        info = self.info
        if name == "auto":  # perceive serve says which; another endpoint cannot
            if not info:
                raise ConfigError(f"protocol: auto, but {self.endpoints[0].url} does not say which tool-call protocol "
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
        """Samples run concurrently (``remote.concurrency`` in flight over all the endpoints); each
        endpoint batches its own."""
        indices = list(range(len(items))) if indices is None else indices
        work = list(zip(indices, items, strict=True))
        with ThreadPoolExecutor(max_workers=max(1, min(self.remote.concurrency, len(work) or 1))) as pool:
            return list(pool.map(lambda w: self._answer(self.stream(w[0], *w[1])), work))

    def stream(self, index: int, image: Image.Image, question: str):
        """One sample's events (:mod:`perceive.loop.events`), ``Finished`` last, its trace's
        ``endpoint`` the base URL it ran on. All its turns go to one endpoint, chosen as it starts
        (the first event is asked for): the one with the fewest samples running."""
        k = self.balancer.take()
        running = True
        try:
            for ev in self.sessions[k].stream(index, image, question):
                if isinstance(ev, Finished):
                    ev.trace.endpoint = self.endpoints[k].url
                    self.balancer.give(k)  # its place is free before the consumer reads the answer
                    running = False
                yield ev
        finally:
            if running:  # the consumer stopped reading before the end
                self.balancer.give(k)

    @staticmethod
    def _answer(events) -> Answer:
        return next(Answer.from_event(ev) for ev in events if isinstance(ev, Finished))


@dataclass
class _Chat:
    messages: list[dict] = field(default_factory=list)


class _ChatBackend:
    """The :class:`~perceive.loop.turn_session.TurnBackend` of an OpenAI-compatible endpoint. Each
    turn is asked for raw (``skip_special_tokens: false``, stopped at the call's closing tag), so
    calls are read from the text exactly as a local run reads them; observations go back as a
    *user* turn in the family's framing (``<tool_response>`` + image), which every engine accepts."""

    def __init__(self, loop: RemoteLoop, endpoint: Endpoint):
        self.loop = loop
        self.endpoint = endpoint

    def _first_user(self, root: Image.Image, views: list[Image.Image], question: str) -> dict:
        parts = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in (root, *views)]
        parts.append({"type": "text", "text": question})
        return {"role": "user", "content": parts}

    def begin(self, root, views, question) -> _Chat:
        system = self.loop.system
        return _Chat(([{"role": "system", "content": system}] if system else []) +
                     [self._first_user(root, views, question)])

    def whole(self, root, question) -> dict:
        loop, o = self.loop, self.loop.options
        ext = {"max_hops": o.max_hops, "actions": {k: dict(v) for k, v in o.action_options.items()}}
        if loop.graph_name:
            ext["graph"] = loop.graph_name
            ext["params"] = loop.graph_params
        resp = self.endpoint.call(lambda c: c.chat.completions.create(
            model=loop.served, messages=[self._first_user(root, [], question)], max_tokens=o.max_new_tokens,
            extra_body={"perceive": ext}))
        p = (resp.model_extra or {}).get("perceive") or {}
        if "trace" not in p:
            raise RemoteError(f"{self.endpoint.url} returned no perceive trace: remote.mode server needs a perceive "
                              "serve endpoint", hint="use remote.mode: client for other endpoints")
        return p["trace"]

    def generate(self, chat: _Chat, turn: str, max_tokens: int) -> Generated:
        """The next piece of the assistant turn; the call's closing tag is put back when the endpoint
        stopped on it."""
        loop = self.loop
        msgs = chat.messages + ([{"role": "assistant", "content": turn}] if turn else [])
        body: dict[str, Any] = {"skip_special_tokens": False}
        if turn:
            body |= {"continue_final_message": True, "add_generation_prompt": False}
        stops = loop.protocol.stop_strings(loop.actions)
        tools = {"tools": loop.tools} if loop.tools else {}
        resp = self.endpoint.call(lambda c: c.chat.completions.create(
            model=loop.served, messages=msgs, max_tokens=max_tokens, stop=stops or None, extra_body=body, **tools))
        choice = resp.choices[0]
        m = choice.message
        text = m.content or ""
        ext = (m.model_extra or {}).get("perceive") or {}
        exact = isinstance(ext.get("text"), str)
        if exact:
            text = ext["text"]  # perceive serve's exact turn, the call written in it
        errors = []
        for tc in [] if exact else (m.tool_calls or []):  # an endpoint's tool parser took the call out of the text
            try:
                arguments = json.loads(tc.function.arguments or "{}")
                text += loop.protocol.call_text(tc.function.name, arguments if isinstance(arguments, dict) else {})
            except ValueError:
                errors.append({"kind": "invalid_json", "message": f"tool call {tc.function.name!r}: its arguments "
                               f"are not JSON: {tc.function.arguments!r}"})
            except NotImplementedError as exc:
                raise RemoteError(str(exc), hint="serve the model without a tool-call parser") from None
        text = loop.protocol.close_call(text, loop.actions)
        usage = resp.usage
        return Generated(text, choice.finish_reason, usage.prompt_tokens if usage else 0,
                         usage.completion_tokens if usage else 0, errors)

    def observe(self, chat: _Chat, turn: str, images: list[Image.Image], text: str | None, first: int) -> None:
        chat.messages.append({"role": "assistant", "content": turn})
        chat.messages.append({"role": "user", "content": self._parts(images, text, first)})

    def _parts(self, images: list[Image.Image], text: str | None, first: int) -> list[dict]:
        """The observation's user turn as content parts, in the family's framing."""
        marks = [f"\x00{k}\x00" for k in range(len(images))] if text is None else [text]
        if len(images) > 1:  # the paper's tiles: "Region k: IMAGE"
            marks = [f"Region {k}: {m}\n" for k, m in enumerate(marks)]
        framed = self.loop.protocol.observation_text(_Bare, marks, first)
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
