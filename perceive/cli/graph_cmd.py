"""``perceive graph validate|run|show``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from perceive.cli.options import (
    ActionTimeoutOpt,
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
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
from perceive.cli.output import console, fail
from perceive.cli.run_config import loop_flags, remote_flags, run_config
from perceive.trace import EventType

app = typer.Typer(no_args_is_help=True, help="Validate, run and draw perception graphs.")


def parse_sets(sets: list[str] | None) -> dict:
    from perceive.config.safe_yaml import loads

    out = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set takes KEY=VALUE, got {item!r}")
        # the same safe, limited reader as files; a ConfigError names `--set KEY` and the limit
        out[key] = loads(value, f"--set {key}")
    return out


@app.command()
def validate(file: str = typer.Argument(..., help="Graph YAML file, or a shipped graph's name."),
             set_: list[str] = typer.Option(None, "--set", help="Override a param: KEY=VALUE."),
             model: Path | None = typer.Option(None, "--model", help="Also check that this model can run the graph "
                                               "(its re-encode branches, the views it was trained to read, its "
                                               "trigger prompts), as `graph run` does when it starts."),
             config: Path | None = typer.Option(None, "--config", help="Also check the graph with this run config "
                                                "(its model, unless --model; its encoders and actions), as `graph "
                                                "run --config` does when it starts.")) -> None:
    """Report every problem of a graph at once, with YAML lines. Exit 1 if there is any.

    With --model or --config, a graph without problems is then checked against the model: exit 1
    if the model cannot run it."""
    from perceive.graph import check, resolve

    try:
        path = resolve(file)
    except FileNotFoundError as exc:
        raise fail(exc, 2) from None
    params = parse_sets(set_)
    spec, issues = check(path, params=params)
    for issue in issues:
        console.print(issue.render(str(path)), markup=False, highlight=False)
    if issues:
        console.print(f"{len(issues)} problem(s)")
        raise typer.Exit(1)
    on = "" if model is None and config is None else _check_on_model(file, path, params, model, config)
    console.print(f"{path}: ok ({len(spec.nodes)} nodes, budget {spec.budget}){on}", markup=False, highlight=False,
                  soft_wrap=True)


def _check_on_model(file: str, path: Path, params: dict, model: Path | None, config: Path | None) -> str:
    """Build the loop ``graph run`` would build for this graph, model and config, running every
    check it makes when it starts (the config's names, the encoders' fit, the graph against the
    model's branches, views and prompts), without running a sample. Exits 1 with the reason if the
    model cannot run the graph; returns `` on MODEL`` and any note (e.g. a trigger left out)."""
    from perceive.errors import PerceiveError
    from perceive.graph import GraphValidationError, compile_graph
    from perceive.loop import PerceptionLoop

    cfg = run_config(config, None, [(("graph",), file, "the GRAPH argument"), (("model", "path"), model, "--model")])
    if cfg.remote is not None:
        raise fail(f"{config} drives a served model (remote.url), which cannot be checked without running it: "
                   f"drop --config for the graph's own checks, or try it with `perceive graph run {file} --config "
                   f"{config} --image IMG --question Q`", 2) from None
    cfg.params.update(params)
    try:
        loop = PerceptionLoop.from_config(cfg, graph=compile_graph(cfg.graph, params=cfg.graph_params()))
    except GraphValidationError as exc:  # the config's params broke it
        console.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    except PerceiveError as exc:  # the message `graph run` would stop with
        raise fail(exc, 1) from None
    note = getattr(loop.controller, "prompt_note", None)
    return f" on the model {cfg.model.path}" + (f"\n  note: {note}" if note else "")


@app.command()
def show(file: str = typer.Argument(...), mermaid: bool = typer.Option(False, "--mermaid", help="Print Mermaid text."),
         out: Path = typer.Option(None, "--out", help="PNG path (default: <graph name>.png)."),
         set_: list[str] = typer.Option(None, "--set")) -> None:
    """Draw the graph (PNG), or print it as Mermaid text."""
    from perceive.graph import compile_graph
    from perceive.graph.draw import render_graph

    g = compile_graph(file, params=parse_sets(set_))
    if mermaid:
        typer.echo(g.to_mermaid(), nl=False)
        return
    path = out or Path(f"{g.name}.png")
    render_graph(g.spec, path)
    console.print(f"wrote {path}")


def run_graph(cfg, image: Path, question: str, as_json: bool, render: Path | None) -> None:
    """Run the graph of run config ``cfg`` on one image and question, and print the answer."""
    from perceive.cli.output import check_picture_path, print_error, write_picture
    from perceive.errors import PerceiveError
    from perceive.graph import GraphValidationError, compile_graph
    from perceive.graph.draw import render_trace
    from perceive.loop_factory import loop_from_config

    if render is not None:
        check_picture_path(render)
    from perceive.graph.trace_graph import to_json, trace_to_graph
    from perceive.images import load_image

    try:
        g = compile_graph(cfg.graph, params=cfg.graph_params())  # a wrong graph fails before the model loads
        img = load_image(image)
        answer = loop_from_config(cfg, graph=g).ask(img, question)
    except GraphValidationError as exc:
        console.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    # written before the answer is printed (to say where it is), its error printed after the answer
    unwritten = write_picture(lambda: render_trace(img, answer.trace, render), render) if render else None
    warn_unencodable(answer.trace)
    if as_json:
        typer.echo(json.dumps({"answer": answer.text, "graph": g.name, "trace": answer.trace.to_dict(),
                               "trace_graph": to_json(trace_to_graph(answer.trace))}, indent=2))
    else:
        typer.echo(answer.text or "(no answer)")  # an empty line would read as a missing one
        for h in answer.trace.hops:
            box = tuple(h.box[k] for k in ("x0", "y0", "x1", "y1")) if h.box else None
            console.print(f"  hop {h.index + 1} [{h.node}]: {h.action} in view {h.target} -> box {box}"
                          + (" (reused)" if h.cached else "")  # the sample's own error is printed once, below
                          + ((", failed (error below)" if h.error == answer.error else
                              f", error: {h.error['message']}") if h.error else ""),
                          markup=False, highlight=False)
        for e in answer.trace.events:
            if e.get("type") == EventType.TOKENIZER:
                continue  # already a warning on stderr
            console.print(f"  event: {e.get('type')}: {e.get('message') or e.get('kind') or ''}", markup=False)
        if render and not unwritten:
            console.print(f"  trace picture: {render}", markup=False)
    if unwritten:
        print_error(*unwritten, stderr=as_json)
    if answer.error:
        if not as_json:
            print_error(answer.error["message"], hint=answer.error.get("hint"))
        raise typer.Exit(1)
    if unwritten:
        raise typer.Exit(1)


def warn_unencodable(trace) -> None:
    """``warning: ...`` on stderr, once per text, for characters the model's tokenizer could not
    encode (the trace's ``tokenizer`` events): the answer may be wrong without any other sign."""
    for message in trace.warnings():
        typer.echo(f"warning: {message}", err=True)


@app.command()
def run(file: str | None = typer.Argument(None, metavar="[GRAPH]",
                                          help="Graph YAML file, or a shipped graph's name (default: the config's "
                                               "graph, else free_choice)."),
        image: Path = typer.Option(..., "--image"), question: str = typer.Option(..., "--question"),
        config: ConfigOpt = None,
        model: ModelOpt = None,
        as_json: JsonOpt = False,
        render: RenderOpt = None,
        set_: SetOpt = None,
        max_new_tokens: MaxNewTokensOpt = None,
        device: DeviceOpt = None,
        dtype: DtypeOpt = None,
        reprefill: ReprefillOpt = False,
        action_timeout: ActionTimeoutOpt = None,
        threads: ThreadsOpt = None,
        remote: RemoteOpt = None,
        remote_model: RemoteModelOpt = None,
        ) -> None:
    """Run a graph on one image and question.

    Values come from, highest first: GRAPH and the flags, --set, the --config file, the defaults."""
    flags = [(("graph",), file, "the GRAPH argument"),
             *loop_flags(model, max_new_tokens, device, dtype, reprefill, action_timeout, threads),
             *remote_flags(remote, remote_model)]
    run_graph(run_config(config, set_, flags), image, question, as_json, render)
