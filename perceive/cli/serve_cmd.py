"""``perceive serve``: the OpenAI-compatible perception server (docs/how-to/serve.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.options import (
    ActionTimeoutOpt,
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    MaxNewTokensOpt,
    ModelOpt,
    SetOpt,
    ThreadsOpt,
)
from perceive.cli.output import console, fail
from perceive.cli.run_config import loop_flags, run_config
from perceive.threads import choose_threads


def serve(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free one; the one bound is "
                                                                   "printed)."),
    name: str | None = typer.Option(None, "--model-name", help="The model id clients ask for (default: the model "
                                                             "folder's name)."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Samples in the running batch at once."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests waiting to join; more get 429."),
    deadline: float = typer.Option(600.0, "--deadline", min=0.01, metavar="S",
                                   help="The longest a request may take, queueing included (a request's own "
                                        "perceive.deadline_s is capped to it)."),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", min=0.001, help="Largest request body (413 above)."),
    allow_local_images: Path | None = typer.Option(None, "--allow-local-images", metavar="DIR",
                                                   help="Accept image_url paths to files under DIR (off: data "
                                                        "URLs only)."),
    drain_window: float = typer.Option(5.0, "--drain-window", min=0.0, max=3600.0, metavar="S",
                                       help="After SIGTERM, the least time the listener stays open answering "
                                            "/health 503 (draining), so a load balancer stops routing here."),
    threads: ThreadsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    action_timeout: ActionTimeoutOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve a model on an OpenAI-compatible chat endpoint that runs perception: POST
    /v1/chat/completions, GET /v1/models, /health and /metrics. SIGTERM drains: /health answers 503
    and new requests are refused while the requests in flight and queued finish (and for at least
    --drain-window), then it exits 0. Ctrl-C drains without the window; a second signal stops at once."""
    try:
        import uvicorn

        from perceive.serve import ServeSettings, create_app
        from perceive.serve.server import DrainingServer, listen
    except ImportError as exc:
        raise fail(f"perceive serve needs the serve extra ({exc.name} is missing): pip install 'perceive[serve]'",
                   1) from None
    from perceive.errors import PerceiveError
    from perceive.loop import PerceptionLoop

    if allow_local_images is not None and not allow_local_images.is_dir():
        raise fail(f"--allow-local-images {allow_local_images}: not a folder", 2)
    flags = loop_flags(model, max_new_tokens, device, dtype, False, action_timeout, threads)
    cfg = run_config(config, set_, flags)  # sets torch's threads, before the model thread starts
    if cfg.remote is not None:
        raise fail(f"{cfg.source} sets remote.url ({cfg.remote.url}): perceive serve runs a local model", 2)
    where = f"[{host}]" if ":" in host else host  # an IPv6 address
    try:
        sock = listen(host, port)
    except OSError as exc:
        raise fail(PerceiveError(f"cannot listen on {where}:{port}: {exc.strerror or exc}",
                                 hint="another server may use the port: choose another --port (0: any free one), "
                                      "or a --host of this machine")) from None
    try:
        loop = PerceptionLoop.from_config(cfg)
    except PerceiveError as exc:
        sock.close()
        raise fail(exc, 1) from None
    settings = ServeSettings(model_name=name or Path(cfg.model.path).resolve().name, max_batch=max_batch,
                             max_queue=max_queue, max_body_bytes=int(max_body_mb * 1024 * 1024),
                             deadline_s=deadline, allow_local_images=allow_local_images)
    app = create_app(loop, settings)

    def started(bound: int | None) -> None:  # the port really bound: --port 0 picks one
        console.print(f"serving {settings.model_name!r} (protocol {loop.protocol.name}) on http://{where}:{bound}/v1",
                      markup=False, highlight=False, soft_wrap=True)
        console.print(f"torch: {choose_threads(cfg.runtime.threads).describe()}", markup=False, highlight=False,
                      soft_wrap=True)

    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="info",
                                           timeout_graceful_shutdown=int(deadline) + 5),
                            app.state.scheduler, drain_window_s=drain_window, on_started=started)
    server.run(sockets=[sock])
    if server.forced:
        raise fail("stopped by a second signal before the requests in flight finished", 1)
    if server.started:
        console.print("drained and stopped", markup=False)
