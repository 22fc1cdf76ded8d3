"""``perceive serve``: the OpenAI-compatible perception server (docs/how-to/serve.md).

Its settings are the run config's (``--config``): the model and the loop's, and the ``serve:``
section (:class:`perceive.config.settings.ServeConfig`); each flag overrides its value, as on every
command (:func:`serve_flags`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from perceive.cli.output import console, fail, listen_or_fail, url_host
from perceive.cli.run_config import check_image_folder, loop_flags, run_config
from perceive.config.settings import MANY_SAMPLES_BATCH_SIZE
from perceive.threads import choose_threads


def serve_flags(host: str | None, port: int | None, name: str | None, max_batch: int | None, max_queue: int | None,
                deadline: float | None, max_body_mb: float | None, allow_local_images: Path | None,
                drain_window: float | None) -> list[tuple[tuple, Any, str]]:
    """The server's own flags as config overrides (``None``: not given): the ``serve:`` section,
    and ``--max-batch``, the running batch, ``runtime.max_batch_size``."""
    return [(("serve", "host"), host, "--host"), (("serve", "port"), port, "--port"),
            (("serve", "model_name"), name, "--model-name"), (("runtime", "max_batch_size"), max_batch, "--max-batch"),
            (("serve", "max_queue"), max_queue, "--max-queue"), (("serve", "deadline_s"), deadline, "--deadline"),
            (("serve", "max_body_mb"), max_body_mb, "--max-body-mb"),
            (("serve", "allow_local_images"), allow_local_images, "--allow-local-images"),
            (("serve", "drain_window_s"), drain_window, "--drain-window")]


def serve_settings(cfg):
    """The :class:`perceive.serve.ServeSettings` of run config ``cfg`` (its model path set)."""
    from perceive.serve import ServeSettings

    s = cfg.serve
    return ServeSettings(model_name=s.model_name or Path(cfg.model.path).resolve().name,
                         max_batch=cfg.runtime.max_batch_size or MANY_SAMPLES_BATCH_SIZE, max_queue=s.max_queue,
                         max_body_bytes=int(s.max_body_mb * 1024 * 1024), deadline_s=s.deadline_s,
                         allow_local_images=s.allow_local_images)


def serve(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    host: str | None = typer.Option(None, "--host", help="Address to listen on (serve.host; default 127.0.0.1; "
                                                         "0.0.0.0: every interface)."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535,
                                    help="Port (serve.port; default 8000; 0: any free one, the one bound is printed)."),
    name: str | None = typer.Option(None, "--model-name", help="The model id clients ask for (serve.model_name; "
                                                             "default: the model folder's name)."),
    max_batch: int | None = typer.Option(None, "--max-batch", min=1,
                                         help=f"Samples in the running batch at once (runtime.max_batch_size; "
                                              f"default {MANY_SAMPLES_BATCH_SIZE})."),
    max_queue: int | None = typer.Option(None, "--max-queue", min=0,
                                         help="Requests waiting to join; more get 429 (serve.max_queue; default 64)."),
    deadline: float | None = typer.Option(None, "--deadline", min=0.01, metavar="S",
                                          help="The longest a request may take, queueing included (serve.deadline_s; "
                                               "default 600; a request's own perceive.deadline_s is capped to it)."),
    max_body_mb: float | None = typer.Option(None, "--max-body-mb", min=0.001,
                                             help="Largest request body, 413 above (serve.max_body_mb; default 20)."),
    allow_local_images: Path | None = typer.Option(None, "--allow-local-images", metavar="DIR",
                                                   help="Accept image_url paths to files under DIR "
                                                        "(serve.allow_local_images; default: data URLs only)."),
    drain_window: float | None = typer.Option(None, "--drain-window", min=0.0, max=3600.0, metavar="S",
                                              help="After SIGTERM, the least time the listener stays open answering "
                                                   "/health 503 (draining), so a load balancer stops routing here "
                                                   "(serve.drain_window_s; default 5)."),
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
    --drain-window), then it exits 0. Ctrl-C drains without the window; a second signal stops at once.

    Values come from, highest first: the flags, --set, --config (its serve: section), the defaults."""
    try:
        import uvicorn

        from perceive.serve import create_app
        from perceive.serve.server import DrainingServer
    except ImportError as exc:
        raise fail(f"perceive serve needs the serve extra ({exc.name} is missing): pip install 'perceive[serve]'",
                   1) from None
    from perceive.errors import PerceiveError
    from perceive.loop import PerceptionLoop

    if allow_local_images is not None and not allow_local_images.is_dir():
        raise fail(f"--allow-local-images {allow_local_images}: not a folder", 2)
    flags = [*loop_flags(model, max_new_tokens, device, dtype, False, action_timeout, threads),
             *serve_flags(host, port, name, max_batch, max_queue, deadline, max_body_mb, allow_local_images,
                          drain_window)]
    cfg = run_config(config, set_, flags)  # sets torch's threads, before the model thread starts
    if cfg.remote is not None:
        raise fail(f"{cfg.source} sets remote.url ({', '.join(cfg.remote.urls)}): perceive serve runs a local model", 2)
    check_image_folder(cfg, "serve", "clients")
    settings = serve_settings(cfg)
    host, port = cfg.serve.host, cfg.serve.port
    where = url_host(host)
    sock = listen_or_fail(host, port)  # before the model loads: a port in use fails at once
    try:
        loop = PerceptionLoop.from_config(cfg)
    except PerceiveError as exc:
        sock.close()
        raise fail(exc, 1) from None
    app = create_app(loop, settings)

    def started(bound: int | None) -> None:  # the port really bound: --port 0 picks one
        console.print(f"serving {settings.model_name!r} (protocol {loop.protocol.name}) on http://{where}:{bound}/v1",
                      markup=False, highlight=False, soft_wrap=True)
        console.print(f"torch: {choose_threads(cfg.runtime.threads).describe()}", markup=False, highlight=False,
                      soft_wrap=True)

    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="info",
                                           timeout_graceful_shutdown=int(settings.deadline_s) + 5),
                            app.state.scheduler, drain_window_s=cfg.serve.drain_window_s, on_started=started)
    server.run(sockets=[sock])
    if server.forced:
        raise fail("stopped by a second signal before the requests in flight finished", 1)
    if server.started:
        console.print("drained and stopped", markup=False)
