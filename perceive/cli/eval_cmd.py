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
          targets: list[str] = typer.Argument(None, metavar="[CONFIG | compare RUN... | benchmarks]",
                                         help="An eval config (YAML): a run config plus data, benchmark, "
                                              "output, ...; or `compare` and eval.json files or folders; or "
                                              "`benchmarks` (the readers)."),
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
          benchmark: str = typer.Option(None, "--benchmark", metavar="NAME",
                                        help="The data's format and metric: vstar, hrbench, mme_realworld, textvqa, "
                                             "docvqa, chartqa, or paper (the default: the VPT layout). `perceive "
                                             "eval benchmarks` lists them."),
          samples: int = typer.Option(None, "--samples", min=1, metavar="K",
                                      help="Ask each item K times (Avg@k; needs sampling.do_sample)."),
          shuffle: bool = typer.Option(None, "--shuffle/--no-shuffle",
                                       help="Show multiple-choice options in a seeded random order (default: on)."),
          ray: bool = typer.Option(False, "--ray",
                                   help="Run on Ray: a pool of actors, each with a loaded model; `--ray` alone: a "
                                        "local cluster (or RAY_ADDRESS's); `--ray ADDRESS` (auto, "
                                        "HOST:6379): that cluster."),
          ray_address: str = typer.Option(None, "--ray-address", metavar="ADDRESS",
                                          help="The Ray cluster to join (as `--ray ADDRESS`)."),
          allow_protocol_differences: bool = typer.Option(
              False, "--allow-protocol-differences",
              help="compare: show runs measured under different protocols side by side, each labelled with its "
                   "protocol (refused otherwise)."),
          by: str = typer.Option(None, "--by", metavar="KEY",
                                 help="compare: one row per run and value of its items' field KEY (e.g. "
                                      "card_size, from perceive data cards --large-cards).")) -> None:
    """Run a model with a graph over a benchmark (--benchmark: V* Bench, HR-Bench, MME-RealWorld,
    TextVQA, DocVQA, ChartQA from local files, or the paper's layout): the benchmark's metric with a
    95% interval, per category, optional LLM judge, crop IoU, hops, latency per sample (mean, p50,
    p95) and throughput (samples/s), with the protocol recorded in the result. With --out,
    each finished sample goes to OUT/predictions.jsonl at once (a stopped run keeps its work:
    finish it with --resume), and eval.json and eval.md at the end. `perceive eval compare RUN...`
    puts several runs side by side (refused when their protocols differ).

    Values come from, highest first: the flags, --set, CONFIG, --config, the defaults."""
    targets = targets or []
    if targets and targets[0] == "compare":
        if len(targets) < 2:
            raise fail("compare needs at least one run: perceive eval compare RUN [RUN...]", 2)
        return compare([Path(t) for t in targets[1:]], out, by, allow_protocol_differences)
    if by is not None or allow_protocol_differences:
        raise fail("--by and --allow-protocol-differences are for comparisons: perceive eval compare RUN... --by KEY",
                   2)
    if targets and targets[0] == "benchmarks":
        return list_benchmarks()
    if ray_address is not None:
        ray = True
    elif ray and targets and not Path(targets[-1]).exists() and Path(targets[-1]).suffix not in (".yaml", ".yml"):
        targets, ray_address = targets[:-1], targets[-1]  # `--ray ADDRESS`: the word after --ray
    if len(targets) > 1:
        raise fail(f"one config at a time, got {len(targets)}: {' '.join(targets)}", 2)
    files = [p for p in (config, Path(targets[0]) if targets else None) if p is not None]
    from perceive.eval.runner import EvalConfig

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
             (("runtime", "threads"), threads, "--threads"), (("benchmark", "name"), benchmark, "--benchmark"),
             (("samples",), samples, "--samples"), (("benchmark", "shuffle"), shuffle, "--shuffle"),
             *remote_flags(remote, remote_model)]
    result, cfg = run(ctx, files, cli_overrides(set_, flags, EvalConfig.model_fields), ray_address if ray else False,
                      resume, overwrite)
    report(result, cfg)


def run(ctx: typer.Context, files: list[Path], overrides, ray: str | None | bool, resume: bool, overwrite: bool):
    """Load the eval config and run it (here, or on Ray: ``ray`` is its address, ``None`` for the
    default cluster, ``False`` for no Ray); ``(result, config)``; a user's mistake exits with its
    one-line error."""
    from perceive.errors import PerceiveError
    from perceive.eval.runner import evaluate, load_eval_config
    from perceive.threads import set_torch_threads

    cfg = None
    try:
        cfg = load_eval_config(files or None, overrides=overrides)
        check_set_params(cfg)
        if ray is not False:  # --ray: the config's ray section (or a default one), at ADDRESS when given
            from perceive.eval.config import RayConfig

            cfg.ray = (cfg.ray or RayConfig()).model_copy(update={"address": ray} if ray else {})
        set_torch_threads(cfg.runtime.threads)  # before the model runs (docs/performance.md#threads)
        if cfg.ray is not None:
            from perceive.eval.distributed import evaluate_on_ray

            result = evaluate_on_ray(cfg, resume=resume, overwrite=overwrite)
        else:
            result = evaluate(cfg, resume=resume, overwrite=overwrite)
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    except KeyboardInterrupt:
        raise _eval_interrupted(ctx, cfg) from None
    return result, cfg


def report(result: dict, cfg) -> None:
    """What a finished eval prints: skipped items, the resume, the table, warnings, failures."""
    from perceive.data.skipped import Skipped
    from perceive.eval.runner import markdown

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


def list_benchmarks() -> None:
    """``perceive eval benchmarks``: each reader's name, metrics, whether it shuffles, and what it reads."""
    from rich.table import Table

    from perceive.eval.benchmarks import BENCHMARKS

    table = Table("benchmark", "metrics", "multiple choice", "reads")
    seen: dict[type, list[str]] = {}
    for name, cls in BENCHMARKS.items():
        seen.setdefault(cls, []).append(name)
    for cls, names in seen.items():
        table.add_row(" / ".join(names), ", ".join(cls.metrics), "yes" if cls.choices else "no", cls.description)
    console.print(table)


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


def _refuse(message: str, hint: str) -> typer.Exit:
    from perceive.errors import InputError

    return fail(InputError(message, hint=hint), 1)


def read_run(r: Path) -> tuple[dict, Path]:
    """The results of the eval run ``r`` (its folder or its eval.json) and the file read; a one-line
    error saying what ``r`` is instead."""
    p = r / "eval.json" if r.is_dir() else r
    if not p.exists():
        from perceive.eval.run_folder import PREDICTIONS

        if r.is_dir() and (r / PREDICTIONS).exists():
            raise _refuse(f"the run {r} has not finished: it holds predictions but no eval.json",
                          "finish it with perceive eval ... --out " + shell_command(str(r)) + " --resume")
        what = "no such file or folder" if not r.exists() else "a folder without eval.json"
        raise _refuse(f"{r} is not an eval run ({what})", "give the folder an eval wrote with --out, or its eval.json")
    try:
        result = json.loads(p.read_text())
    except OSError as exc:
        raise _refuse(f"cannot read the run {p}: {exc.strerror or exc}", "check the file's permissions") from None
    except ValueError as exc:
        raise _refuse(f"{p} is not an eval result: not valid JSON ({exc})",
                      "give an eval.json perceive eval wrote") from None
    if not isinstance(result, dict) or not isinstance(result.get("summary"), dict):
        raise _refuse(f"{p} is not an eval result: it has no summary", "give an eval.json perceive eval wrote")
    return result, p


def label_protocols(results: list[dict], labels: list[str], allow: bool) -> None:
    """When the runs' protocols differ: refused with every difference listed, unless ``allow``; then
    each run's ``protocol_group`` names its protocol (``A``, ``B``, ...), a column of the table."""
    from perceive.eval.protocol import differences

    protocols = [r.get("protocol") for r in results]
    distinct: list = []
    for p in protocols:
        if p not in distinct:
            distinct.append(p)
    if len(distinct) == 1:
        return
    lines = []
    for label, p in zip(labels, protocols, strict=True):
        diff = differences(protocols[0], p)
        if diff:
            lines.append(f"  {labels[0]} vs {label}: " + "; ".join(diff))
    message = "the runs were measured under different protocols, so their figures are not comparable:\n" + \
        "\n".join(lines)
    if not allow:
        raise _refuse(message, "compare runs of one protocol (the same benchmark and data, shuffling, extraction, "
                                 "samples, decoding and budgets), or add --allow-protocol-differences to show them "
                                 "side by side, each run labelled with its protocol")
    console.print(f"[red]warning[/]: {message}", highlight=False, soft_wrap=True)
    for r, p in zip(results, protocols, strict=True):
        r["protocol_group"] = chr(ord("A") + distinct.index(p))


def compare(runs: list[Path], out: Path | None = None, by: str | None = None, allow: bool = False) -> None:
    """Put several runs side by side (one markdown table, then their per-category figures); runs
    that share a name are told apart by their folders. Runs measured under different protocols are
    refused unless ``allow`` (then each row names its protocol). ``by``: one row per run and value
    of its records' item field ``by``."""
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
        result, p = read_run(r)
        results.append(result)
        paths.append(p)
    labels = run_labels(results, paths)
    for res, label in zip(results, labels, strict=True):
        res["name"] = label
    label_protocols(results, labels, allow)
    if by is not None:
        try:
            results = [part for res in results for part in split_by(res, by)]  # each part keeps its run's label
        except PerceiveError as exc:
            raise fail(exc, 1) from None
    table = markdown(results)
    typer.echo(table)
    if out:
        try:
            out.write_text(table)
        except OSError as exc:
            raise fail(f"cannot write {out}: {exc.strerror or exc}", 1) from None
