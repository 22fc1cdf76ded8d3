"""A live ``perceive serve`` app on 127.0.0.1 in a background thread, for tests and benchmarks
that call it over real HTTP (the official ``openai`` client, httpx)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(loop, **settings):
    """Serve ``loop`` (``ServeSettings`` fields as keywords); yields the ``/v1`` base URL. The
    server is drained and stopped on exit."""
    import uvicorn

    from perceive.serve import ServeSettings, create_app

    app = create_app(loop, ServeSettings(**settings))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > 30:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)


def data_url(image) -> str:
    """A PNG data URL of an image file (its bytes as they are) or a PIL image."""
    import base64
    import io
    from pathlib import Path

    if hasattr(image, "save"):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        raw = buf.getvalue()
    else:
        raw = Path(image).read_bytes()
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def user_message(image, question: str) -> dict:
    """An OpenAI chat user message: the image (a data URL), then the question."""
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                        {"type": "text", "text": question}]}
