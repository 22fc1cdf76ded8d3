"""The request body of ``POST /v1/chat/completions``: OpenAI's chat schema (the parts perceive
reads), with perceive's own options in one extension object, ``perceive``.

Unknown fields are refused (a typo must not be silently ignored); OpenAI fields perceive cannot
honour are refused with the reason (``n`` above 1, sampling)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perceive.strict import StrictModel


class ImageURL(StrictModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class ImagePart(StrictModel):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(StrictModel):
    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    # extra allowed: a client echoes back the server's own ``perceive`` field on each call
    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(StrictModel):
    """One chat message. ``perceive`` on an assistant message is the server's own record of the
    turn (``{"text": ...}``: exactly what the model wrote); sending it back keeps the replay exact."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    perceive: dict[str, Any] | None = None


class FunctionDef(StrictModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(StrictModel):
    type: Literal["function"]
    function: FunctionDef


class PerceiveOptions(StrictModel):
    """perceive's own request options (``extra_body={"perceive": {...}}`` with the openai client)."""

    #: a shipped graph name (``free_choice``, ``region_then_answer``, ...), or the server's default
    graph: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    max_hops: int | None = Field(None, ge=0, le=64)
    #: per-action options over the server's (``{"region_select": {"margin": 0}}``)
    actions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: seconds this request may take, queueing included (the server's ``--deadline`` caps it)
    deadline_s: float | None = Field(None, gt=0, le=86400)
    #: put the trace in the response (``perceive.trace``)
    trace: bool = True


class ChatRequest(StrictModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1)
    stop: str | list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    #: vLLM's option: keep perception tokens in ``content`` (the raw turn)
    skip_special_tokens: bool = True
    #: vLLM's options: continue the last assistant message instead of opening a new turn
    continue_final_message: bool = False
    add_generation_prompt: bool = True
    perceive: PerceiveOptions = Field(default_factory=PerceiveOptions)
    # OpenAI fields perceive serve cannot honour: refused with the reason, not as unknown
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    # OpenAI fields accepted and not used (a warning says so)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None

    def unsupported(self) -> list[str]:
        """The OpenAI fields set that perceive serve cannot honour."""
        out = [k for k in ("logprobs", "top_logprobs", "logit_bias", "functions", "function_call") if getattr(self, k)]
        if self.response_format and self.response_format.get("type") != "text":
            out.append("response_format")
        return out

    def ignored(self) -> list[str]:
        return [k for k in ("presence_penalty", "frequency_penalty") if getattr(self, k)]
