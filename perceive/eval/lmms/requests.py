"""An lmms-eval chat request as the perception loop's sample: its image and its question.

A chat model's request (``Instance.args``) is ``(ctx, doc_to_messages, gen_kwargs, doc_id, task,
split)`` (``lmms_eval/api/task.py``: ``ConfigurableMessagesTask.construct_requests``); its
messages are ``doc_to_messages(doc)`` for the task's document ``task_dict[task][split][doc_id]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from perceive.errors import InputError, PerceiveError


@dataclass(frozen=True)
class Request:
    """One request's fields: where its document is, and how the task asks it."""

    position: int
    task: str
    split: str
    doc_id: int
    doc_to_messages: Any
    gen_kwargs: dict[str, Any]

    @classmethod
    def of(cls, position: int, instance) -> Request:
        _ctx, doc_to_messages, gen_kwargs, doc_id, task, split = instance.args
        return cls(position, task, split, doc_id, doc_to_messages, dict(gen_kwargs or {}))


@dataclass
class Asked:
    """What a request asks: the image the loop looks at (RGB, its own pixels), the question (the
    user turns' text, joined by newlines) and, when the request had more than one image, a note
    saying the loop took the first."""

    image: Image.Image
    question: str
    note: str | None = None


def asked(request: Request, task_dict: dict) -> Asked:
    """The image and question of ``request``. A request perceive cannot ask (no image, a video or
    audio, a task whose document or messages fail) raises :class:`~perceive.errors.InputError`:
    its sample fails with that error in its trace, and the run goes on."""
    from lmms_eval.protocol import ChatMessages

    from perceive.images import as_rgb, load_image

    try:
        doc = task_dict[request.task][request.split][request.doc_id]
        chat = ChatMessages(messages=request.doc_to_messages(doc))
    except PerceiveError:
        raise
    except Exception as exc:  # noqa: BLE001 - a task's own code: its failure is this sample's, not the run's
        raise InputError(f"{request.task} doc {request.doc_id}: its messages could not be built: "
                         f"{type(exc).__name__}: {exc}", hint="check the task's doc_to_messages / doc_to_visual "
                         "and its data") from None
    images, videos, audios = chat.extract_media()
    if videos or audios:
        raise InputError(f"{request.task} doc {request.doc_id} has {'video' if videos else 'audio'}: perceive's "
                         "loop looks at an image", hint="evaluate perceive on image tasks")
    if not images:
        raise InputError(f"{request.task} doc {request.doc_id} has no image: perceive's loop needs one to look at",
                         hint="evaluate perceive on image tasks")
    texts = [c.text for m in chat.messages if m.role == "user" for c in m.content if c.type == "text"]
    note = (f"{len(images)} images in the request: the perception loop looked at the first only"
            if len(images) > 1 else None)
    return Asked(as_rgb(load_image(images[0])), "\n".join(texts), note)
