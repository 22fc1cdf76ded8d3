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


class Endpoint:
    """One base URL of ``remote.url``: its client, and whether it could be reached.

    ``reachable`` turns False the first time a request cannot connect at all (not a timeout, not
    an error status): the samples already on it fail, and no new sample is sent to it
    (:class:`~perceive.remote.balance.Balancer`)."""

    def __init__(self, remote, url: str, client=None):
        self.remote = remote
        self.url = url
        self.client = client if client is not None else make_client(remote, url)
        self.reachable = True

    def call(self, fn):
        """``fn(client)`` (one endpoint call); the client retries 429/5xx with backoff
        (``remote.max_retries``). Failures become :class:`RemoteError`, with ``status`` when the
        endpoint answered."""
        import openai

        remote, url = self.remote, self.url
        try:
            return fn(self.client)
        except openai.APIStatusError as exc:
            hint = (f"is remote.url the endpoint's /v1 base URL (e.g. {url.rstrip('/')}/v1), and remote.model a "
                    "model it serves (GET /v1/models)?" if exc.status_code == 404 else
                    f"see the endpoint's log; 429 and 5xx were retried {remote.max_retries} time(s)")
            e = RemoteError(f"{url} answered {exc.status_code}: {_message(exc)}", hint=hint)
            e.status = exc.status_code
            raise e from None
        except openai.APITimeoutError:  # a subclass of APIConnectionError: an overloaded endpoint is no dead one
            raise RemoteError(f"{url} did not answer within {remote.timeout_s} s",
                              hint="raise remote.timeout_s") from None
        except openai.APIConnectionError as exc:
            self.reachable = False
            raise RemoteError(f"cannot reach {url}: {exc}",
                              hint="is the server running, and is remote.url its /v1 base URL?") from None

    def models(self):
        """``GET /models``, or None when the endpoint has no such route (it answered with an error
        status); an endpoint that cannot be reached raises :class:`RemoteError`."""
        try:
            return self.call(lambda c: c.models.list())
        except RemoteError as exc:
            if getattr(exc, "status", None) is None:
                raise
            return None


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        e = body.get("error", body)
        if isinstance(e, dict) and e.get("message"):
            return str(e["message"])
    return str(exc)


def make_client(remote, url: str | None = None):
    """An ``openai.OpenAI`` client for ``url`` (default: the first of ``remote.urls``)."""
    try:
        import openai
    except ImportError as exc:
        raise ConfigError("the remote engine needs the remote extra (the openai package): "
                          "pip install 'perceive[remote]'") from exc
    key = os.environ.get(remote.api_key_env) if remote.api_key_env else None
    if remote.api_key_env and not key:
        raise ConfigError(f"remote.api_key_env names {remote.api_key_env!r}, which is not set",
                          hint=f"export {remote.api_key_env}=... before the run")
    return openai.OpenAI(base_url=url or remote.urls[0], api_key=key or "EMPTY", timeout=remote.timeout_s,
                         max_retries=remote.max_retries)
