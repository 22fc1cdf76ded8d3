"""``perceive train``, ``perceive data cards|reading|mix|check``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich.markup import escape

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
from perceive.cli.output import console, fail
from perceive.cli.run_config import check_set_params, cli_overrides, remote_flags

data_app = typer.Typer(no_args_is_help=True, help="Generate and check datasets.")


@data_app.command()
def cards(n: int = typer.Option(..., "--n", min=1, help="Number of images."),
          out: Path = typer.Option(..., "--out", help="Output folder."),
          seed: int = typer.Option(0, "--seed"),
          backgrounds: Path = typer.Option(None, "--backgrounds", help="Folder of background photos."),
          split: str = typer.Option("train", "--split",
                                    help="Backgrounds: train or eval (held-out) scikit-image photos, train_wide "
                                         "(train plus the other bundled photos), or flat (single colours: a "
                                         "first localisation stage)."),
          fmt: str = typer.Option("png", "--format", help="png (lossless) or jpg (smaller, for large sets)."),
          margin: int = typer.Option(1, "--margin", min=0,
                                     help="Cells added around the card's cells in the crop (1: the paper)."),
          prompts: bool = typer.Option(True, "--prompts/--no-prompts",
                                       help="End region/re-encode questions with the paper's instruction."),
          augment: bool = typer.Option(False, "--augment",
                                       help="Training only: jitter each background (flips, turns, greyscale, "
                                            "gamma, contrast) before drawing the card."),
          distractors: bool = typer.Option(False, "--distractors",
                                           help="Training only: paint light card-sized blobs (hard negatives) "
                                                "under the card."),
          widths: tuple[int, int] = typer.Option((40, 64), "--card-widths",
                                                 help="Training only: the card's width range LO HI in px, inside "
                                                      "40 64 (narrow it to over-sample small cards)."),
          reencode: str | None = typer.Option(None, "--reencode", metavar="ACTION",
                                              help="The features action whose span, placeholder and images key "
                                                   "reencode.json uses: any installed one with a model branch "
                                                   "(`perceive plugins list`), e.g. a plugin's. Default: the card "
                                                   "recipes' branch.")
          ) -> None:
    """Write the number-card task in the paper's dataset layout (plain, region, reencode)."""
    from rich.progress import Progress

    from perceive.data.cards import REENCODE_BRANCH, generate, reencode_branch
    from perceive.errors import PerceiveError

    reencode = REENCODE_BRANCH if reencode is None else reencode
    try:
        reencode_branch(reencode)  # a wrong name is a usage error, before anything is written
    except PerceiveError as e:
        raise fail(e, 2) from None
    with Progress() as bar:
        task = bar.add_task("cards", total=n)
        try:
            generate(out, n, seed=seed, backgrounds=backgrounds, split=split, fmt=fmt, margin=margin, prompts=prompts,
                     augment=augment, distractors=distractors, widths=widths, reencode=reencode,
                     progress=lambda k: bar.update(task, completed=k))
        except ValueError as e:
            raise fail(e) from None
    console.print(f"wrote {n} images and plain, region, locate, read_card, read, reencode ({reencode} spans) and "
                  f"cards .json to {out}")


@data_app.command("reading")
def reading(n: int = typer.Option(..., "--n", min=1, help="Number of crops."),
            out: Path = typer.Option(..., "--out", help="Output folder."),
            context: int = typer.Option(None, "--context", min=0,
                                        help="Card plus 0..J px of surroundings per side; omit for the touched cells."),
            scale: float = typer.Option(3.0, "--scale", min=0.1, help="Resize factor of each crop."),
            seed: int = typer.Option(0, "--seed"),
            split: str = typer.Option("train", "--split", help="scikit-image photo set: train or eval (held out).")
            ) -> None:
    """Write a reading curriculum set: crops around the card, with question and answer."""
    from rich.progress import Progress

    from perceive.data.cards import reading_set

    with Progress() as bar:
        task = bar.add_task("crops", total=n)
        reading_set(out, n, seed=seed, split=split, context=context, scale=scale,
                    progress=lambda k: bar.update(task, completed=k))
    console.print(f"wrote {n} crops and read.json to {out}")


@data_app.command("mix")
def mix_cmd(out: Path = typer.Argument(..., help="The dataset file to write."),
            parts: list[str] = typer.Argument(..., help="FILE or FILE:COUNT (a random COUNT of its items)."),
            seed: int = typer.Option(0, "--seed")) -> None:
    """Mix datasets into one file (curriculum stages keep a share of earlier items)."""
    from perceive.data.mix import mix, parse_part
    from perceive.errors import PerceiveError

    try:
        mix(out, [parse_part(part) for part in parts], seed=seed)
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    except OSError as exc:
        raise fail(f"cannot mix {' '.join(parts)} into {out}: {exc}", 1) from None
    console.print(f"wrote {out}")


@data_app.command("check")
def check(path: Path, grid: int = typer.Option(8, "--grid", min=1)) -> None:
    """Report every item of a dataset that does not fit the layout."""
    from perceive.data.dataset import VPTDataset

    ds = VPTDataset(path, grid=grid)
    for issue in ds.issues:
        console.print(str(issue), markup=False)
    console.print(f"{len(ds)} usable items, {len(ds.issues)} problem(s)")
    if ds.issues:
        raise typer.Exit(1)


def _warn_skipped(skipped) -> None:
    """Print a dataset's skipped items (how many, why, the first few) on the console."""
    if skipped.items:
        console.print(f"[yellow]warning[/]: {escape(skipped.describe())}")


def _command(*args: object) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def train(config: Path = typer.Argument(..., help="Training config (YAML)."),
          resume: Path = typer.Option(None, "--resume", help="A checkpoint folder (OUTPUT/checkpoint-N) to continue "
                                                             "from."),
          steps: int = typer.Option(None, "--steps", min=1, help="Override optim.steps."),
          overwrite: bool = typer.Option(False, "--overwrite",
                                         help="Clear the run already in the output folder (its model, checkpoints "
                                              "and history) and start again."),
          max_skipped_fraction: float = typer.Option(
              None, "--max-skipped-fraction", min=0.0, max=1.0,
              help="Override data.max_skipped_fraction: the share of a set's items that may be skipped (missing "
                   "images, malformed items) before training refuses to start (default 0.05)."),
          set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                         help="Override a config value: KEY.PATH=VALUE, e.g. optim.lr=3e-4 (VALUE is "
                                              "YAML). Repeatable."),
          allow_changes: bool = typer.Option(False, "--allow-changes",
                                             help="With --resume: resume even though the config names another model "
                                                  "or other training data than the checkpoint's (say, the same data "
                                                  "moved to another folder).")) -> None:
    """Fine-tune a VPT model (projector alignment or instruction tuning).

    Values come from, highest first: the flags, --set, CONFIG, the files it extends, the
    defaults. Each evaluation prints one line; OUTPUT/evals.jsonl keeps the full records. With
    --resume, each setting that differs from the checkpoint's config is listed (another model or
    other data is refused). Ctrl-C stops after the current step and saves a checkpoint there; the
    command to resume is printed."""
    from perceive.errors import PerceiveError
    from perceive.train import Trainer, load_train_config
    from perceive.train.eval_log import EVALS_FILE
    from perceive.train.resume import describe_changes, resume_changes
    from perceive.train.trainer import TrainingInterrupted, check_checkpoint, check_output, run_files

    extra: list[object] = [a for item in set_ or [] for a in ("--set", item)]  # what a resumed run needs too
    overrides = cli_overrides(set_, [])
    try:
        cfg = load_train_config(config, overrides=overrides)
        if steps is not None:
            cfg.optim.steps = steps
            extra += ["--steps", steps]
        if max_skipped_fraction is not None:
            cfg.data.max_skipped_fraction = max_skipped_fraction
            extra += ["--max-skipped-fraction", max_skipped_fraction]
        # cheap checks first: a wrong folder or checkpoint fails before the model is built
        clear = check_output(cfg.output, resume, overwrite)
        if resume is not None:
            state = check_checkpoint(resume)
            changed = describe_changes(resume, state["step"], resume_changes(resume, state, cfg, allow_changes))
            if changed:
                console.print(f"[yellow]warning[/]: {escape(changed[0])}", highlight=False, soft_wrap=True)
                for line in changed[1:]:
                    console.print(line, markup=False, highlight=False, soft_wrap=True)
        t = Trainer(cfg)
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    except KeyboardInterrupt:
        raise fail("interrupted before training started: nothing was written", 130) from None
    for skipped in t.skips.values():
        _warn_skipped(skipped)
    for warning in t.prompt_warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=True)
    if clear:
        console.print(f"--overwrite: clearing the earlier run in {cfg.output} "
                      f"({', '.join(p.name for p in clear)})", markup=False)
    try:
        history = t.train(resume, overwrite=overwrite, allow_changes=allow_changes)
    except TrainingInterrupted as exc:
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        if exc.checkpoint is not None:
            console.print("resume with: " + _command("perceive", "train", config, "--resume", exc.checkpoint, *extra),
                          markup=False, highlight=False, soft_wrap=True)
        else:
            again = ["--overwrite"] if run_files(cfg.output) else []
            console.print("start again with: " + _command("perceive", "train", config, *extra, *again),
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    out = t.save_model()
    if any("eval" in h for h in history):  # each was printed as one line when it ran
        console.print(f"evaluations (the full records): {cfg.output / EVALS_FILE}", markup=False, highlight=False,
                      soft_wrap=True)
    console.print(f"model written to {out}")


def eval_(ctx: typer.Context,
          targets: list[str] = typer.Argument(None, metavar="[CONFIG | compare RUN...]",
                                         help="An eval config (YAML): a run config plus data, batch_size, output, "
                                              "...; or `compare` and eval.json files or folders."),
          config: ConfigOpt = None,
          model: ModelOpt = None, data: Path = typer.Option(None, "--data"),
          graph: GraphOpt = None, out: Path = typer.Option(None, "--out", help="Output folder (compare: a .md file)."),
          max_samples: int = typer.Option(None, "--max-samples", min=1),
          batch_size: int = typer.Option(None, "--batch-size", min=1,
                                         help="Samples run at once in the running batch (batch_size; default 8)."),
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
                                              "replacing its predictions.")) -> None:
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
        return compare([Path(t) for t in targets[1:]], out)
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
             (("batch_size",), batch_size, "--batch-size"),
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
    _warn_skipped(Skipped.from_json(result["data"], result["data_items"], result["skipped_items"]))
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
    return _command(*args, *extra)


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


def compare(runs: list[Path], out: Path | None = None) -> None:
    """Put several runs side by side (one markdown table); runs that share a name are told apart
    by their folders."""
    from perceive.errors import OutputError
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
    table = markdown(results)
    typer.echo(table)
    if out:
        try:
            out.write_text(table)
        except OSError as exc:
            raise fail(f"cannot write {out}: {exc}", 1) from None
