"""A chat request checked and turned into a :class:`~perceive.serve.scheduler.Job`: the model it
names, the tools it lists, its perceive options (graph, params, hops, actions), its conversation.
A request the server cannot run is an :class:`HTTPProblem` (4xx) before it queues."""

from __future__ import annotations

import time

from perceive.errors import PerceiveError
from perceive.serve.messages import read_conversation
from perceive.serve.openai_schema import ChatRequest
from perceive.serve.problems import HTTPProblem, problem_from
from perceive.serve.scheduler import Job


def callable_actions(loop) -> list:
    """The actions a client can run for the model: views and text (features go back into the
    model's own layers), and, for special-token calls, only those whose start token its tokenizer
    has (an installed plugin's span the model never learned is not a tool of it)."""
    tok = loop.tokenizer
    unk = getattr(tok, "unk_token_id", None)

    def known(token: str) -> bool:
        i = tok.convert_tokens_to_ids(token)
        return i is not None and i != unk

    return [a for a in loop.actions
            if a.grammar is not None and a.observation in ("view", "text") and known(a.grammar.start)]


class Requests:
    """Checks requests against the served ``loop`` and ``settings``."""

    def __init__(self, loop, settings):
        self.loop, self.settings = loop, settings
        self.tool_names = set(loop.protocol.tool_names(callable_actions(loop)))

    def job(self, req: ChatRequest) -> Job:
        loop, settings = self.loop, self.settings
        if req.model != settings.model_name:
            raise HTTPProblem(404, f"the model {req.model!r} does not exist; this server serves "
                              f"{settings.model_name!r} (GET /v1/models)", param="model", code="model_not_found")
        if req.unsupported():
            raise HTTPProblem(400, f"{', '.join(req.unsupported())}: not supported by perceive serve (it returns the "
                              "model's text, its tool calls and its trace)", param=req.unsupported()[0],
                              code="unsupported")
        self._check_tools(req)
        try:
            conv = read_conversation(req, loop.protocol, settings.allow_local_images)
        except PerceiveError as exc:
            raise problem_from(exc) from None
        conv.warnings += self._ignored(req)
        o = req.perceive
        unknown = sorted(set(o.actions) - {a.name for a in loop.registry.select(None)})
        if unknown:
            raise HTTPProblem(400, f"perceive.actions: no action named {unknown}", param="perceive.actions")
        if o.graph is not None or o.params or o.max_hops is not None:
            self._check_graph(o)
        deadline = min(o.deadline_s or settings.deadline_s, settings.deadline_s)
        client_tools = (frozenset(t.function.name for t in req.tools) if req.tools and req.tool_choice != "none"
                        else False)
        return Job(conv, client_tools=client_tools, max_new_tokens=req.max_completion_tokens or req.max_tokens,
                   graph=o.graph, params=o.params or None, max_hops=o.max_hops, action_options=o.actions or None,
                   deadline=time.monotonic() + deadline, stream=req.stream)

    def _check_tools(self, req: ChatRequest) -> None:
        for t in req.tools or []:
            if t.function.name not in self.tool_names:
                raise HTTPProblem(400, f"tools: no tool named {t.function.name!r}; this model calls "
                                  f"{sorted(self.tool_names)} (protocol {self.loop.protocol.name})", param="tools",
                                  code="invalid_tools")
        if req.tool_choice not in (None, "auto", "none"):
            raise HTTPProblem(400, "tool_choice: only 'auto' and 'none' are supported (the model decides when "
                              "to look)", param="tool_choice")

    def _ignored(self, req: ChatRequest) -> list[str]:
        """Warnings for what the request sets and the server does not use."""
        warnings = []
        o = self.loop.options
        how = (f"this server samples with its run config's sampling (temperature {o.temperature}, top_k {o.top_k}, "
               f"top_p {o.top_p})" if o.do_sample else "this server decodes greedily (its run config's sampling)")
        if req.temperature or (req.top_p is not None and req.top_p < 1):
            warnings.append(f"temperature/top_p are not used per request: {how}")
        if req.ignored():
            warnings.append(f"{', '.join(req.ignored())}: not used ({how})")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        own = set(self.loop.protocol.stop_strings(self.loop.actions))
        if set(stops) - own:
            warnings.append(f"stop strings other than the calls' closing tags are not applied: "
                            f"{sorted(set(stops) - own)}")
        return warnings

    def _check_graph(self, o) -> None:
        """Compile and check a request's own graph before it queues; the loop keeps the controller,
        so the sample reuses it (compiled once per graph, params and budget)."""
        from perceive.graph import GraphValidationError

        try:
            self.loop.controller_for(o.graph, o.params or None, o.max_hops)
        except (GraphValidationError, FileNotFoundError) as exc:
            raise HTTPProblem(400, f"perceive.graph: {exc}", param="perceive.graph", code="invalid_graph") from None
        except PerceiveError as exc:
            raise problem_from(exc) from None
