"""``perceive eval``: run a model with a graph over a dataset and score it; ``perceive eval compare
RUN...``: several runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from perceive.cli.options import (
    ActionTimeoutOpt,
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    GraphOpt,
    MaxNewTokensOpt,
    ModelOpt,
    RemoteModelOpt,
    RemoteOpt,
    SetOpt,
    ThreadsOpt,
)
from perceive.cli.output import console, fail, shell_command, warn_skipped
from perceive.cli.run_config import check_set_params, cli_overrides, remote_flags


def eval_(ctx: typer.Context,
          targets: list[str] = typer.Argument(None, metavar="[CONFIG | compare RUN...]",
                                         help="An eval config (YAML): a run config plus data, output, "
                                              "...; or `compare` and eval.json files or folders."),
          config: ConfigOpt = None,
          model: ModelOpt = None, data: Path = typer.Option(None, "--data"),
          graph: GraphOpt = None, out: Path = typer.Option(None, "--out", help="Output folder (compare: a .md file)."),
          max_samples: int = typer.Option(None, "--max-samples", min=1),
          batch_size: int = typer.Option(None, "--batch-size", min=1,
                                         help="Samples run at once in the running batch (runtime.max_batch_size; "
                                              "default 8)."),
          max_new_tokens: MaxNewTokensOpt = None,
          device: DeviceOpt = None, dtype: DtypeOpt = None, threads: ThreadsOpt = None,
          oracle_spans: bool = typer.Option(None, "--oracle-spans/--no-oracle-spans",
                                            help="Force each item's ground-truth perception span first."),
          max_skipped_fraction: float = typer.Option(
              None, "--max-skipped-fraction", min=0.0, max=1.0,
              help="The share of the data's items that may be skipped (missing images, malformed items) before the "
                   "run refuses to report a score (default 0.05)."),
          action_timeout: ActionTimeoutOpt = None,
          set_: SetOpt = None,
          remote: RemoteOpt = None,
          remote_model: RemoteModelOpt = None,
          resume: bool = typer.Option(False, "--resume",
                                      help="Finish the run in --out that was stopped: run only the samples its "
                                           "predictions.jsonl lacks (same config and data, or it refuses), then "
                                           "report over all of them."),
          overwrite: bool = typer.Option(False, "--overwrite",
                                         help="Start again in an --out folder that holds an unfinished run, "
                                              "replacing its predictions."),
          by: str = typer.Option(None, "--by", metavar="KEY",
                                 help="compare: one row per run and value of its items' field KEY (e.g. "
                                      "card_size, from perceive data cards --large-cards).")) -> None:
    """Run a model with a graph over a dataset: exact match, ANLS, relaxed accuracy, optional LLM
    judge, crop IoU, latency per sample (mean, p50, p95) and throughput (samples/s). With --out,
    each finished sample goes to OUT/predictions.jsonl at once (a stopped run keeps its work:
    finish it with --resume), and eval.json and eval.md at the end. `perceive eval compare RUN...`
    puts several runs side by side.

    Values come from, highest first: the flags, --set, CONFIG, --config, the defaults."""
    targets = targets or []
    if targets and targets[0] == "compare":
        if len(targets) < 2:
            raise fail("compare needs at least one run: perceive eval compare RUN [RUN...]", 2)
        return compare([Path(t) for t in targets[1:]], out, by)
    if by is not None:
        raise fail("--by breaks a comparison down: perceive eval compare RUN... --by KEY", 2)
    if len(targets) > 1:
        raise fail(f"one config at a time, got {len(targets)}: {' '.join(targets)}", 2)
    files = [p for p in (config, Path(targets[0]) if targets else None) if p is not None]
    from perceive.data.skipped import Skipped
    from perceive.errors import PerceiveError
    from perceive.eval.runner import EvalConfig, evaluate, load_eval_config, markdown
    from perceive.threads import set_torch_threads

    if not files and ((model is None and remote is None) or data is None):
        raise fail("give a config file, or --model (or --remote URL) and --data (a config: CONFIG, or --config "
                   "RUN.yaml)", 2)
    flags = [(("model", "path"), model, "--model"), (("data",), data, "--data"), (("graph",), graph, "--graph"),
             (("output",), out, "--out"), (("max_samples",), max_samples, "--max-samples"),
             (("runtime", "max_batch_size"), batch_size, "--batch-size"),
             (("runtime", "max_new_tokens"), max_new_tokens, "--max-new-tokens"), (("device",), device, "--device"),
             (("dtype",), dtype, "--dtype"), (("oracle_spans",), oracle_spans, "--oracle-spans"),
             (("max_skipped_fraction",), max_skipped_fraction, "--max-skipped-fraction"),
             (("runtime", "action_timeout_s"), action_timeout, "--action-timeout"),
             (("runtime", "threads"), threads, "--threads"), *remote_flags(remote, remote_model)]
    overrides = cli_overrides(set_, flags, EvalConfig.model_fields)
    cfg = None
    try:
        cfg = load_eval_config(files or None, overrides=overrides)
        check_set_params(cfg)
        set_torch_threads(cfg.runtime.threads)  # before the model runs (docs/performance.md#threads)
        result = evaluate(cfg, resume=resume, overwrite=overwrite)
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    except KeyboardInterrupt:
        raise _eval_interrupted(ctx, cfg) from None
    warn_skipped(Skipped.from_json(result["data"], result["data_items"], result["skipped_items"]))
    if "resumed" in result:
        r = result["resumed"]
        dropped = f"; {r['dropped_lines']} line(s) cut short were dropped and their samples run again" \
            if r["dropped_lines"] else ""
        console.print(f"resumed {cfg.output}: {r['kept']} sample(s) were done, "
                      f"{result['summary']['samples'] - r['kept']} ran now{dropped}", markup=False, highlight=False)
    typer.echo(markdown([result]))
    unknown = result["summary"].get("unknown_characters")
    if unknown:
        console.print(f"[yellow]warning[/]: {unknown} of {result['summary']['samples']} question(s) hold characters "
                      "the model's tokenizer maps to its unknown token (a `tokenizer` event in their trace)",
                      highlight=False)
    failed = [r["error"] for r in result["records"] if r.get("error")]
    if failed:  # say why, not only how many: the first error in full
        from perceive.cli.output import print_error

        print_error(f"{len(failed)} of {len(result['records'])} samples failed; the first: {failed[0]['message']}",
                    hint=failed[0].get("hint"))
    if cfg.output:
        console.print(f"wrote {cfg.output / 'eval.json'}, eval.md and predictions.jsonl", markup=False,
                      highlight=False)


def _eval_interrupted(ctx: typer.Context, cfg) -> typer.Exit:
    """Ctrl-C: say what was kept and the command that finishes the run."""
    from perceive.eval.run_folder import PREDICTIONS, read_predictions

    out = getattr(cfg, "output", None)
    if out is None:
        return fail("interrupted: nothing was kept; give --out DIR to keep each sample as it finishes", 130)
    if not (out / PREDICTIONS).exists() or (out / "eval.json").exists():  # the run had not started writing
        return fail(f"interrupted before any sample ran: nothing was written to {out}", 130)
    done = len(read_predictions(out / PREDICTIONS)[0])
    console.print(f"interrupted: {done} finished sample(s) are kept in {out / PREDICTIONS}", markup=False,
                  highlight=False, soft_wrap=True)
    console.print("finish with: " + _again(ctx, "--resume"), markup=False, highlight=False,
                  soft_wrap=True)
    return typer.Exit(130)


def _again(ctx, *extra: str) -> str:
    """This command line as given (the options the user set), with ``extra`` added."""
    args: list[object] = ["perceive", ctx.info_name]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if p.name in ("resume", "overwrite") or value is None or value == [] or value == p.default:
            continue
        if not getattr(p, "opts", None) or p.param_type_name == "argument":
            args += list(value) if isinstance(value, list | tuple) else [value]
        elif getattr(p, "is_flag", False) or p.secondary_opts:
            args.append(p.opts[0] if value else p.secondary_opts[0])
        else:
            for v in value if isinstance(value, list | tuple) else [value]:
                args += [p.opts[0], v]
    return shell_command(*args, *extra)


def run_labels(results: list[dict], paths: list[Path]) -> list[str]:
    """Names for the compare table, one per run and all different: a run's own name, unless
    another run has it too; then its run folder (with the folders above it, as many as tell the
    runs apart), and a ``#k`` suffix for a run given twice."""

    def tail(f: Path, depth: int) -> str:
        return "/".join([x for x in f.parts if x != f.anchor][-depth:])

    names = [str(r.get("name") or "") for r in results]
    folders = [(p.parent if p.name == "eval.json" else p.with_suffix("")).resolve() for p in paths]
    labels = list(names)
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(n, []).append(i)
    for n, idx in groups.items():
        distinct = sorted({folders[i] for i in idx})
        if n and len(distinct) == 1:
            continue  # one run, or the same run given again: the suffix below
        for i in idx:  # each folder with as few parents as tell it from the others
            f, depth = folders[i], 1
            while depth < len(f.parts) - 1 and any(tail(g, depth) == tail(f, depth) for g in distinct if g != f):
                depth += 1
            labels[i] = tail(f, depth)
    seen: dict[str, int] = {}
    for i, label in enumerate(list(labels)):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels


def compare(runs: list[Path], out: Path | None = None, by: str | None = None) -> None:
    """Put several runs side by side (one markdown table); runs that share a name are told apart
    by their folders. ``by``: one row per run and value of its records' item field ``by``."""
    from perceive.errors import OutputError, PerceiveError
    from perceive.eval.report import split_by
    from perceive.eval.run_folder import check_output_file
    from perceive.eval.runner import markdown

    if out is not None:
        try:
            check_output_file(out)
        except OutputError as exc:
            raise fail(exc, 1) from None
    results, paths = [], []
    for r in runs:
        p = r / "eval.json" if r.is_dir() else r
        try:
            results.append(json.loads(p.read_text()))
        except (OSError, ValueError) as exc:
            raise fail(f"cannot read the run {r}: {exc}", 1) from None
        paths.append(p)
    for res, label in zip(results, run_labels(results, paths), strict=True):
        res["name"] = label
    if by is not None:
        try:
            results = [part for res in results for part in split_by(res, by)]
        except PerceiveError as exc:
            raise fail(exc, 1) from None
    table = markdown(results)
    typer.echo(table)
    if out:
        try:
            out.write_text(table)
        except OSError as exc:
            raise fail(f"cannot write {out}: {exc}", 1) from None
