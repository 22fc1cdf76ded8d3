"""The settings of a run, each defined once: what the perception loop reads, and what
``perceive serve`` and ``perceive mcp`` read.

Each model here is a section of the run config (:class:`perceive.config.PerceiveConfig`):
``runtime:`` (:class:`RuntimeConfig`: limits, batching, the system prompt, the target frame),
``sampling:`` (:class:`SamplingConfig`), ``serve:`` (:class:`ServeConfig`) and ``mcp:``
(:class:`McpConfig`), so every value is reachable from a YAML file and from
``--set SECTION.FIELD=VALUE``. The loop's own settings,
:class:`perceive.loop.LoopOptions`, are :class:`LoopRuntime` and :class:`SamplingConfig` together
with the run's action options and protocol: the fields and their defaults live here only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from perceive.strict import StrictModel
from perceive.threads import MAX_THREADS

#: the graph a run uses when none is named (a shipped graph: ``graphs/free_choice.yaml``)
DEFAULT_GRAPH = "free_choice"
#: the protocol name that means "the one the model's files declare" (perceive.protocols.detect)
AUTO_PROTOCOL = "auto"
#: the longest timeout of one perception call in a config, in seconds (a day); ``.inf`` and
#: ``1e12`` are refused when a config is loaded, so a typo cannot pass for "no timeout"
MAX_ACTION_TIMEOUT_S = 86400
#: the longest deadline of a request to ``perceive serve``, in seconds (a day)
MAX_DEADLINE_S = 86400
#: samples in the running batch of a command that runs many (``perceive eval``, ``perceive serve``)
#: when ``runtime.max_batch_size`` is unset
MANY_SAMPLES_BATCH_SIZE = 8
#: seconds, above 0, at most :data:`MAX_ACTION_TIMEOUT_S`, finite (``.inf`` and ``.nan`` refused)
ActionTimeout = Annotated[float, Field(gt=0, le=MAX_ACTION_TIMEOUT_S, allow_inf_nan=False)]


class LoopRuntime(StrictModel):
    """The run's limits and the loop's switches: the run config's ``runtime:`` section, less
    ``threads`` (a process setting, :class:`RuntimeConfig`)."""

    #: perception calls per sample: the hop budget of every graph that reads ``${max_hops}``
    #: (free_choice, iterative_zoom; see :func:`perceive.graph.compile_graph`)
    max_hops: int = Field(4, ge=0)
    #: tokens a sample may generate (forced and observation tokens not counted)
    max_new_tokens: int = Field(256, ge=1)
    #: after a malformed perception span: keep generating, or finish the sample
    on_malformed: Literal["continue", "stop"] = "continue"
    #: timeout of one perception call in seconds (None: none); a call past it fails its own sample
    #: with ``action_timeout`` (see perceive.dispatch.timeouts for what happens to its thread). A run
    #: config allows at most a day; in Python ``float("inf")`` is no timeout too
    action_timeout_s: float | None = Field(120.0, gt=0)
    #: the reference's way: prefill the whole conversation again after each observation
    reprefill: bool = False
    #: False: never dispatch (generation as the reference's offline first round does)
    dispatch: bool = True
    #: which view a span's coordinates refer to: the latest view shown, or the original image
    target: Literal["latest", "root"] = "latest"
    #: the system prompt (None: the protocol's own, with the actions it declares)
    system: str | None = None
    #: keep each generated token's logits on the answer (``Answer.logits``)
    record_logits: bool = False
    #: samples in the running batch at once (None: all; ``perceive eval`` and ``perceive serve``:
    #: :data:`MANY_SAMPLES_BATCH_SIZE`); the others join as samples finish
    max_batch_size: int | None = Field(None, ge=1)


class RuntimeConfig(LoopRuntime):
    """The run config's ``runtime:`` section: :class:`LoopRuntime` and the process's torch threads.
    A file's ``action_timeout_s`` is finite and at most a day (:data:`MAX_ACTION_TIMEOUT_S`)."""

    #: torch intra-op threads; null: the usable cores less one (perceive.threads)
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)

    @field_validator("action_timeout_s")
    @classmethod
    def _a_day_at_most(cls, value: float | None) -> float | None:
        # ``threading.Event.wait`` overflows on huge timeouts: a file names a real timeout or null
        if value is not None and not (math.isfinite(value) and value <= MAX_ACTION_TIMEOUT_S):
            raise ValueError(f"a timeout is a finite number of seconds, at most {MAX_ACTION_TIMEOUT_S} (a day); "
                             "null for none")
        return value


class SamplingConfig(StrictModel):
    """How the next token is chosen: the run config's ``sampling:`` section. Greedy unless
    ``do_sample``; then transformers' warpers in this order: temperature, top-k, top-p."""

    do_sample: bool = False
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False)
    #: keep the k likeliest tokens (None: all)
    top_k: int | None = Field(None, ge=1)
    #: keep the likeliest tokens whose probabilities add up to top_p (None: all)
    top_p: float | None = Field(None, gt=0, le=1)
    #: sample i of a run draws from ``torch.Generator().manual_seed(seed + i)``
    seed: int = Field(0, ge=0)


class ServeConfig(StrictModel):
    """``perceive serve``'s settings: the run config's ``serve:`` section; each has a flag that
    overrides it (``--port``, ``--max-queue``, ...). The running batch is ``runtime.max_batch_size``
    (``--max-batch``; default :data:`MANY_SAMPLES_BATCH_SIZE`)."""

    #: the address to listen on (0.0.0.0: every interface)
    host: str = "127.0.0.1"
    #: 0: any free port (the one bound is printed)
    port: int = Field(8000, ge=0, le=65535)
    #: the model id clients ask for (None: the model folder's name)
    model_name: str | None = None
    #: requests waiting to join the running batch; more are answered 429
    max_queue: int = Field(64, ge=0)
    #: the longest a request may take, queueing included (a request's own deadline is capped to it)
    deadline_s: float = Field(600.0, ge=0.01, le=MAX_DEADLINE_S)
    #: the largest request body, in MB (413 above)
    max_body_mb: float = Field(20.0, ge=0.001, allow_inf_nan=False)
    #: accept ``image_url`` paths to files under this folder (None: data URLs only); relative to the
    #: config file that sets it
    allow_local_images: Path | None = None
    #: after SIGTERM, the least time the listener stays open answering /health 503 (draining)
    drain_window_s: float = Field(5.0, ge=0, le=3600)


class McpConfig(StrictModel):
    """``perceive mcp``'s settings: the run config's ``mcp:`` section (docs/how-to/use-perceive-from-an-agent.md).
    Which actions are tools is the run's ``actions:`` section (each enabled action whose observation is a
    view or text), with the options it gives them; ``runtime.action_timeout_s`` is each call's timeout."""

    #: the graphs served as tools (``graph_<name>``), each a shipped graph's name or a graph file (relative
    #: to the config file that names it); None: the run's ``graph`` and every shipped graph (graphs/*.yaml)
    graphs: list[str] | None = None
    #: the options an agent may set per call, by action (``{zoom: [size]}``): each listed field appears in
    #: the action tool's ``options`` argument, with the run config's value as its default. Unlisted
    #: (the default: none), a tool takes no ``options``: an agent cannot raise ``zoom``'s size or
    #: ``ocr``'s threads past what the operator chose
    agent_options: dict[str, list[str]] = Field(default_factory=dict)
    #: accept images given as paths of files under this folder (None: ids and data URLs only); a relative
    #: path an agent gives is taken under it; relative to the config file that sets it
    allow_local_images: Path | None = None
    #: images the server keeps at once, registered images and the views tools made of them together;
    #: past it, the least recently used image goes, with all its views
    max_images: int = Field(256, ge=1)
    #: the memory those images may take, in MB of decoded RGB pixels (3 bytes a pixel); past it, the
    #: least recently used image goes, with its views. A single larger image is refused
    max_image_mb: float = Field(1024.0, gt=0, allow_inf_nan=False)
    #: with ``--http``: the address to listen on (0.0.0.0: every interface, no DNS-rebinding protection)
    host: str = "127.0.0.1"
    #: with ``--http``: the port (0: any free port; the one bound is printed)
    port: int = Field(8765, ge=0, le=65535)
    #: with ``--http``: the largest request body, in MB (413 above): an image sent as base64 counts here
    max_body_mb: float = Field(20.0, ge=0.001, allow_inf_nan=False)


__all__ = ["AUTO_PROTOCOL", "DEFAULT_GRAPH", "MANY_SAMPLES_BATCH_SIZE", "MAX_ACTION_TIMEOUT_S", "MAX_DEADLINE_S",
           "ActionTimeout", "LoopRuntime", "McpConfig", "RuntimeConfig", "SamplingConfig", "ServeConfig"]
