"""Moved to :mod:`perceive.serve.openai_schema` (the OpenAI chat request and response models).

This name is internal (no doc or plugin names it) and is kept only until ``perceive/serve/app.py``
imports the new module; then delete it."""

from perceive.serve.openai_schema import *  # noqa: F403
from perceive.serve.openai_schema import ChatRequest, ImagePart, Message, TextPart  # noqa: F401
