"""``perceive serve``: the OpenAI-compatible perception server (docs/how-to/serve.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.output import console, fail
from perceive.cli.run_config import CONFIG_HELP, SET_HELP, loop_flags, run_config


def serve(
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    model: Path | None = typer.Option(None, "--model", help="Local model folder (default: the config's model.path, "
                                                           "else models/default)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free one, printed)."),
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
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Default 256."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... or auto (the default)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto (the default)."),
    action_timeout: float | None = typer.Option(None, "--action-timeout", min=0.001, max=86400, metavar="S",
                                                help="Deadline of each perception call, in seconds (default 120)."),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help=SET_HELP),
) -> None:
    """Serve a model on an OpenAI-compatible chat endpoint that runs perception: POST
    /v1/chat/completions, GET /v1/models, /health and /metrics. SIGTERM (or Ctrl-C) finishes the
    requests in flight, then exits."""
    try:
        import uvicorn

        from perceive.serve import ServeSettings, create_app
    except ImportError as exc:
        raise fail(f"perceive serve needs the serve extra ({exc.name} is missing): pip install 'perceive[serve]'",
                   1) from None
    from perceive.errors import PerceiveError
    from perceive.loop import PerceptionLoop

    if allow_local_images is not None and not allow_local_images.is_dir():
        raise fail(f"--allow-local-images {allow_local_images}: not a folder", 2)
    cfg = run_config(config, set_, loop_flags(model, max_new_tokens, device, dtype, False, action_timeout))
    if cfg.remote is not None:
        raise fail(f"{cfg.source} sets remote.url ({cfg.remote.url}): perceive serve runs a local model", 2)
    try:
        loop = PerceptionLoop.from_config(cfg)
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    settings = ServeSettings(model_name=name or Path(cfg.model.path).resolve().name, max_batch=max_batch,
                             max_queue=max_queue, max_body_bytes=int(max_body_mb * 1024 * 1024),
                             deadline_s=deadline, allow_local_images=allow_local_images)
    app = create_app(loop, settings)
    console.print(f"serving {settings.model_name!r} (protocol {loop.protocol.name}) on http://{host}:{port}/v1",
                  markup=False, highlight=False)
    server = _draining_server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                            timeout_graceful_shutdown=int(deadline) + 5))
    server.run()
    console.print("drained and stopped", markup=False)


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """SIGTERM or Ctrl-C: stop taking connections, finish the requests in flight, exit 0 (uvicorn
        would raise the signal again after its shutdown, so the process would die by it)."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return DrainingServer


def _draining_server(config):
    return _server_class()(config)
