"""A chat request's messages as one perceive conversation: the image and the question of the
first user turn, then the earlier assistant turns whose calls the client ran
(:class:`perceive.loop.Turn`), in either shape a client sends them back:

* OpenAI's: the assistant message with ``tool_calls``, then one ``tool`` message per call (an
  image part for a view, text for text);
* the one every engine accepts (research code, perceive's remote engine): the assistant message's
  text with the call written in it, then a user message holding the observation's images (or
  text), in the family's own framing (``<tool_response>`` ...), which is stripped here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from perceive.errors import InputError
from perceive.images import decode_image_url
from perceive.loop import ToolResult, Turn
from perceive.serve.openai_schema import ChatRequest, ImagePart, Message, TextPart


@dataclass
class Conversation:
    image: Image.Image
    question: str
    history: list[Turn] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _parts(m: Message) -> list[TextPart | ImagePart]:
    if m.content is None:
        return []
    return [TextPart(type="text", text=m.content)] if isinstance(m.content, str) else list(m.content)


def _text(m: Message) -> str:
    return "".join(p.text for p in _parts(m) if isinstance(p, TextPart))


def _images(m: Message, local_root: Path | None) -> list[Image.Image]:
    return [decode_image_url(p.image_url.url, local_root) for p in _parts(m) if isinstance(p, ImagePart)]


def read_conversation(req: ChatRequest, protocol, local_root: Path | None) -> Conversation:
    """The conversation of ``req`` (raises :class:`InputError` / :class:`ImageError` with what to fix)."""
    msgs = list(req.messages)
    warnings = []
    while msgs and msgs[0].role in ("system", "developer"):
        warnings.append("the system message is not used: the model's system turn is its protocol's "
                        f"({protocol.name})")
        msgs.pop(0)
    if not msgs or msgs[0].role != "user":
        raise InputError("the conversation must start with a user message holding the image and the question")
    first = msgs.pop(0)
    images = _images(first, local_root)
    if len(images) != 1:
        raise InputError(f"the first user message must hold exactly one image; it holds {len(images)}",
                         hint="send one image_url part (a data URL) and the question as a text part")
    conv = Conversation(images[0], _text(first).strip(), warnings=warnings)
    before, after = protocol.observation_framing()
    i = 0
    while i < len(msgs):
        m = msgs[i]
        if m.role != "assistant":
            raise InputError(f"message {i + 2} ({m.role}) must follow an assistant message with a tool call",
                             hint="one question per request: start a new request for a new question")
        text = (m.perceive or {}).get("text") if isinstance((m.perceive or {}).get("text"), str) else None
        if text is None:
            text = _text(m)
            for tc in m.tool_calls or []:
                try:
                    arguments = json.loads(tc.function.arguments or "{}")
                    text += protocol.call_text(tc.function.name, arguments if isinstance(arguments, dict) else {})
                except ValueError:
                    raise InputError(f"tool call {tc.id}: its arguments are not JSON") from None
                except NotImplementedError:
                    raise InputError(f"tool call {tc.id}: this model's calls ({protocol.name}) cannot be rebuilt "
                                     "from tool_calls", hint="send the assistant message back as the server returned "
                                     "it, with its 'perceive' field (perceive.text: the turn as the model wrote "
                                     "it)") from None
            if m.tool_calls:
                warnings.append(f"message {i + 2}: the assistant turn was rebuilt from tool_calls (no perceive.text): "
                                "what the model wrote outside the call is lost and its answer may differ; send the "
                                "message back with its 'perceive' field")
        ids = [tc.id for tc in m.tool_calls or []]
        results: list[ToolResult] = []
        j = i + 1
        while j < len(msgs) and msgs[j].role == "tool":
            t = msgs[j]
            if ids and t.tool_call_id not in ids:
                raise InputError(f"message {j + 2}: tool_call_id {t.tool_call_id!r} answers no call of the assistant "
                                 f"message before it (its calls: {ids})")
            results.append(_images(t, local_root) or _text(t))
            j += 1
        if not results and j < len(msgs) and msgs[j].role == "user":
            obs = msgs[j]
            got = _images(obs, local_root)
            if not got:
                t = _text(obs).strip()
                got = t[len(before.strip()):] if before.strip() and t.startswith(before.strip()) else t
                got = got[:-len(after.strip())] if after.strip() and got.endswith(after.strip()) else got
                got = got.strip()
            results.append(got)
            j += 1
        if j == i + 1:  # nothing answers it: the last message, to be continued
            if j != len(msgs) or not req.continue_final_message:
                raise InputError("an assistant message must be followed by its tool results",
                                 hint="send the tool message(s), or continue_final_message: true to continue it")
            conv.history.append(Turn(text, [], partial=True))
        else:
            conv.history.append(Turn(text, results))
        i = j
    if req.continue_final_message and not (conv.history and conv.history[-1].partial):
        raise InputError("continue_final_message needs an assistant message last")
    return conv
