"""``perceive train``: fine-tune a VPT model from a training config."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from perceive.cli.output import console, fail, shell_command, warn_skipped
from perceive.cli.run_config import cli_overrides


def train(config: Path = typer.Argument(..., help="Training config (YAML); or `plot`, then run folders."),
          runs: list[Path] = typer.Argument(None, hidden=True, help="`perceive train plot RUN...`: run folders."),
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
    """Fine-tune a VPT model: supervised (projector alignment or instruction tuning), or by
    reinforcement learning from rewards (`method: grpo`).

    `perceive train plot RUN...` draws GRPO runs' curves (RUN/telemetry.jsonl) to RUN/curves.png
    (several runs: the first one's folder, curves.png, one line per run).

    Values come from, highest first: the flags, --set, CONFIG, the files it extends, the
    defaults. Each evaluation prints one line; OUTPUT/evals.jsonl keeps the full records. With
    --resume, each setting that differs from the checkpoint's config is listed (another model or
    other data is refused). Ctrl-C stops after the current step and saves a checkpoint there; the
    command to resume is printed."""
    from perceive.errors import PerceiveError
    from perceive.rl import GRPOConfig, GRPOTrainer, load_training_config
    from perceive.train import Trainer
    from perceive.train.eval_log import EVALS_FILE
    from perceive.train.resume import describe_changes, resume_changes
    from perceive.train.trainer import TrainingInterrupted, check_checkpoint, check_output, run_files

    if str(config) == "plot" and not config.exists():
        _plot(runs or [])
        return
    if runs:
        raise fail(f"unexpected arguments after the config: {' '.join(map(str, runs))} (perceive train CONFIG "
                   "[options]; or perceive train plot RUN...)", 2)
    extra: list[object] = [a for item in set_ or [] for a in ("--set", item)]  # what a resumed run needs too
    overrides = cli_overrides(set_, [])
    try:
        cfg = load_training_config(config, overrides=overrides)
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
        t = GRPOTrainer(cfg) if isinstance(cfg, GRPOConfig) else Trainer(cfg)
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    except KeyboardInterrupt:
        raise fail("interrupted before training started: nothing was written", 130) from None
    for skipped in t.skips.values():
        warn_skipped(skipped)
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
            resume_cmd = shell_command("perceive", "train", config, "--resume", exc.checkpoint, *extra)
            console.print("resume with: " + resume_cmd, markup=False, highlight=False, soft_wrap=True)
        else:
            again = ["--overwrite"] if run_files(cfg.output) else []
            console.print("start again with: " + shell_command("perceive", "train", config, *extra, *again),
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    out = t.save_model()
    if any("eval" in h for h in history):  # each was printed as one line when it ran
        console.print(f"evaluations (the full records): {cfg.output / EVALS_FILE}", markup=False, highlight=False,
                      soft_wrap=True)
    console.print(f"model written to {out}")


def _plot(runs: list[Path]) -> None:
    """``perceive train plot RUN...``: the curves of GRPO runs to a PNG."""
    from perceive.errors import PerceiveError

    if not runs:
        raise fail("perceive train plot needs at least one run folder: perceive train plot runs/grpo (a folder "
                   "`perceive train` with method: grpo wrote)", 2)
    try:
        from perceive.rl.plot import plot_runs

        out = plot_runs(runs, runs[0] / "curves.png")
    except ImportError as exc:
        raise fail(f"plotting needs matplotlib ({exc}): pip install \"perceive[rl]\"", 1) from None
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    console.print(f"curves written to {out}", markup=False, highlight=False, soft_wrap=True)
