"""``perceive ask``: answer a question about an image, letting the model call perception actions."""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.options import (
    ActionTimeoutOpt,
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    GraphOpt,
    JsonOpt,
    MaxNewTokensOpt,
    ModelOpt,
    RemoteModelOpt,
    RemoteOpt,
    RenderOpt,
    ReprefillOpt,
    SetOpt,
    ThreadsOpt,
)
from perceive.cli.output import fail
from perceive.cli.run_config import loop_flags, remote_flags, run_config


def ask(
    image: Path = typer.Argument(..., help="Image file."),
    question: str = typer.Argument(..., help="The question."),
    config: ConfigOpt = None,
    model: ModelOpt = None,
    graph: GraphOpt = None,
    as_json: JsonOpt = False,
    max_hops: int | None = typer.Option(None, "--max-hops", min=0,
                                        help="Perception calls allowed: runtime.max_hops and the graph's max_hops "
                                             "param (default 4)."),
    max_new_tokens: MaxNewTokensOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    reprefill: ReprefillOpt = False,
    render: RenderOpt = None,
    action_timeout: ActionTimeoutOpt = None,
    threads: ThreadsOpt = None,
    set_: SetOpt = None,
    remote: RemoteOpt = None,
    remote_model: RemoteModelOpt = None,
) -> None:
    """Answer a question about an image, letting the model call perception actions.

    Values come from, highest first: the flags, --set, the --config file, the defaults."""
    from perceive.cli.graph_cmd import run_graph

    if not question.strip():
        raise fail("the question is empty: pass it as the second argument, e.g. "
                   f"perceive ask {image} \"What is written on the sign?\"", 2)
    from perceive.images import check_image_file, check_input_size

    # --max-hops is runtime.max_hops, and also the graph's param: a config's params.max_hops would
    # otherwise beat the flag (tests/test_cli.py: --max-hops 0 over params.max_hops 2)
    flags = [(("graph",), graph, "--graph"), (("runtime", "max_hops"), max_hops, "--max-hops"),
             (("params", "max_hops"), max_hops, "--max-hops"),
             *loop_flags(model, max_new_tokens, device, dtype, reprefill, action_timeout, threads),
             *remote_flags(remote, remote_model)]
    cfg = run_config(config, set_, flags)
    # header only (upright size): a wrong or too small or too elongated image fails before the model loads
    check_input_size(check_image_file(image), f"image {image}")
    run_graph(cfg, image, question, as_json, render)
