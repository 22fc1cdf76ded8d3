"""The endpoint side of the remote engine: the official ``openai`` client (retries with backoff
on 429/5xx and timeouts are its own), errors as :class:`~perceive.errors.RemoteError`, images as
data URLs."""

from __future__ import annotations

import base64
import io
import os

from PIL import Image

from perceive.errors import ConfigError, RemoteError
from perceive.images import as_rgb


def data_url(image: Image.Image) -> str:
    """A PNG data URL: lossless, so the endpoint sees exactly the pixels a local run shows."""
    buf = io.BytesIO()
    as_rgb(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()



def call_endpoint(remote, fn):
    """``fn()`` (one endpoint call); the client retries 429/5xx with backoff (``remote.max_retries``).
    Failures become :class:`RemoteError`, with ``status`` when the endpoint answered."""
    import openai

    try:
        return fn()
    except openai.APIStatusError as exc:
        hint = (f"is remote.url the endpoint's /v1 base URL (e.g. {remote.url.rstrip('/')}/v1), and remote.model a "
                "model it serves (GET /v1/models)?" if exc.status_code == 404 else
                f"see the endpoint's log; 429 and 5xx were retried {remote.max_retries} time(s)")
        e = RemoteError(f"{remote.url} answered {exc.status_code}: {_message(exc)}", hint=hint)
        e.status = exc.status_code
        raise e from None
    except openai.APITimeoutError:
        raise RemoteError(f"{remote.url} did not answer within {remote.timeout_s} s",
                          hint="raise remote.timeout_s") from None
    except openai.APIConnectionError as exc:
        raise RemoteError(f"cannot reach {remote.url}: {exc}",
                          hint="is the server running, and is remote.url its /v1 base URL?") from None


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        e = body.get("error", body)
        if isinstance(e, dict) and e.get("message"):
            return str(e["message"])
    return str(exc)


def make_client(remote):
    try:
        import openai
    except ImportError as exc:
        raise ConfigError("the remote engine needs the remote extra (the openai package): "
                          "pip install 'perceive[remote]'") from exc
    key = os.environ.get(remote.api_key_env) if remote.api_key_env else None
    if remote.api_key_env and not key:
        raise ConfigError(f"remote.api_key_env names {remote.api_key_env!r}, which is not set",
                          hint=f"export {remote.api_key_env}=... before the run")
    return openai.OpenAI(base_url=remote.url, api_key=key or "EMPTY", timeout=remote.timeout_s,
                         max_retries=remote.max_retries)


