"""A training run's folder and its checkpoints, and what Ctrl-C does to a run.

The output folder: :func:`check_output` refuses one that holds another run (unless overwritten or
resumed), :func:`prepare_output` clears it when overwriting. Checkpoints: ``checkpoint-N`` folders
holding accelerate's ``save_state`` (model, optimizer, scheduler, RNG) and ``trainer_state.json``
(the step, the history and the run's config, written last: it marks a complete checkpoint). :func:`save_checkpoint`
writes ``checkpoint-N.tmp`` and renames it when complete, so a run killed or interrupted while
saving leaves no truncated ``checkpoint-N``; :func:`check_checkpoint` and
:func:`load_checkpoint` say what is wrong with one to resume from.

Ctrl-C (:class:`SigintStop`): the first asks the run to stop after the current step and save a
checkpoint there; a second stops it at once, wherever it is (a step, an evaluation, a save), and
saves nothing. :class:`TrainingInterrupted` says which happened and names the checkpoint to resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
from pathlib import Path

from perceive.errors import CheckpointError, ConfigError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (or another ``KeyboardInterrupt``). ``saved``: a checkpoint was
    written at ``step``, the last finished step; otherwise ``checkpoint`` is the latest earlier one
    in the output folder, or None, and ``during_step`` says whether the run stopped in the middle
    of step ``step + 1`` (else between steps: in an evaluation or a save after ``step``). Resume
    with ``Trainer.train(resume=checkpoint)``."""

    def __init__(self, step: int, steps: int, checkpoint: Path | None, saved: bool, during_step: bool = True):
        self.step, self.steps, self.checkpoint, self.saved = step, steps, checkpoint, saved
        self.during_step = during_step and not saved
        if saved:
            msg = f"interrupted after step {step} of {steps}: saved a checkpoint to {checkpoint}"
        elif checkpoint is None:
            msg = f"interrupted at step {step} of {steps}, before any checkpoint was saved: nothing to resume"
        elif self.during_step:
            msg = (f"interrupted during step {step + 1} of {steps}, with no checkpoint saved for it: "
                   f"the latest checkpoint is {checkpoint}")
        else:
            msg = (f"interrupted after step {step} of {steps}, at once, with no checkpoint saved on the way out: "
                   f"the latest checkpoint is {checkpoint}")
        super().__init__(msg)

    def __str__(self) -> str:
        return str(self.args[0])


def checkpoint_step(path: Path) -> int | None:
    """N for a complete ``checkpoint-N`` folder (its trainer state written last), else None."""
    m = _CHECKPOINT.match(path.name)
    return int(m.group(1)) if m and (path / "trainer_state.json").is_file() else None


def checkpoints(folder: str | Path) -> list[Path]:
    """The complete checkpoints in a run folder, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in folder.iterdir() if p.is_dir()]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1] if found else None


def run_files(output: str | Path) -> list[Path]:
    """What a training run leaves in its output folder: ``model``, ``history.json``,
    ``evals.jsonl``, ``checkpoint-*``, and a GRPO run's ``telemetry.jsonl`` and ``curves.png``.
    Other files there are not the trainer's, and are left alone."""
    output = Path(output)
    if not output.is_dir():
        return []
    names = ("model", "history.json", "evals.jsonl", "telemetry.jsonl", "curves.png")
    return sorted(p for p in output.iterdir() if p.name in names or p.name.startswith("checkpoint-"))


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def check_output(output: str | Path, resume: str | Path | None = None, overwrite: bool = False) -> list[Path]:
    """Refuse to train into a folder that holds another run, unless ``overwrite`` (its run files
    are returned, to clear) or ``resume`` (the run continues). Nothing is deleted here."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"the output {output} is a file, not a folder", hint="set output: to a folder")
    if resume is not None and overwrite and _inside(Path(resume), output):
        raise ConfigError(f"--overwrite would delete the checkpoint --resume {resume} continues from",
                          hint="--resume continues the run in that folder; --overwrite clears it to start "
                               "again: give one of them")
    found = run_files(output)
    if not found or overwrite or (resume is not None and _inside(Path(resume), output)):
        return found if overwrite else []
    latest = latest_checkpoint(output)
    cont = f"--resume {latest} to continue it, " if latest else ""
    raise ConfigError(f"the output folder {output} already holds a run ({', '.join(p.name for p in found)}); "
                      f"training into it would mix the two (a new model beside the old run's checkpoints)",
                      hint=f"pass --overwrite to clear it and start again, {cont}or set output: to another folder")


def prepare_output(output: str | Path, resume: str | Path | None = None, overwrite: bool = False) -> list[str]:
    """:func:`check_output`, then delete the earlier run's files when ``overwrite``: their names."""
    found = check_output(output, resume, overwrite)
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return [p.name for p in found]


def _other_checkpoints(path: Path) -> str:
    others = [p for p in checkpoints(path.parent) if p.name != path.name]
    return ", ".join(str(p) for p in others[-3:])


def check_checkpoint(path: str | Path) -> dict:
    """The trainer state of a checkpoint to resume from, or a ``CheckpointError`` saying what is
    wrong with it (missing, a run folder rather than a checkpoint, incomplete, damaged)."""
    path = Path(path)
    restart = "or start again without --resume (and with --overwrite)"
    if not path.exists():
        latest = latest_checkpoint(path.parent)
        hint = (f"the latest checkpoint in {path.parent} is {latest}" if latest else
                f"{path.parent} holds no checkpoint" if path.parent.is_dir() else f"{path.parent} does not exist")
        raise CheckpointError(f"cannot resume: there is no checkpoint {path}",
                              hint=f"{hint}; a run writes OUTPUT/checkpoint-N every save_every steps and "
                                   f"when it is interrupted")
    if not path.is_dir():
        raise CheckpointError(f"cannot resume from {path}: a checkpoint is a folder (OUTPUT/checkpoint-N)")
    if not (path / "trainer_state.json").exists() and latest_checkpoint(path):
        raise CheckpointError(f"cannot resume from {path}: it is a run folder, not a checkpoint",
                              hint=f"resume from one of its checkpoints; the latest: {latest_checkpoint(path)}")
    missing = [f for f in ("trainer_state.json", "optimizer.bin", "scheduler.bin") if not (path / f).is_file()]
    if not any(path.glob("model*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        missing.insert(0, "model.safetensors")
    others = _other_checkpoints(path)
    earlier = f"resume from another checkpoint ({others}) " if others else ""
    if missing:
        raise CheckpointError(f"cannot resume: the checkpoint {path} is incomplete ({', '.join(missing)} missing)",
                              hint=f"it was cut short (a copy that did not finish, a full disk?): {earlier}{restart}")
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        int(state["step"]), list(state["history"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot resume: the checkpoint {path} is damaged (trainer_state.json: {exc})",
                              hint=f"{earlier}{restart}") from None
    return state


def save_checkpoint(acc, path: str | Path, state: dict) -> None:
    """Write a checkpoint of ``acc``'s prepared objects and ``state`` (the trainer's step and
    history) to ``path.tmp``, then rename it to ``path``: a run killed while saving leaves no
    truncated ``path``, and one interrupted (a second Ctrl-C) or failing while saving removes the
    ``.tmp``. The renaming itself is not cut in two by Ctrl-C (see :func:`sigint_deferred`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    try:
        if acc.is_main_process:
            if old.exists() and not path.exists():  # a run killed between the two renames below
                os.replace(old, path)
            for stale in (tmp, old):
                if stale.exists():
                    shutil.rmtree(stale)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps(state))
            with sigint_deferred():  # an earlier checkpoint-N goes only as the new one takes its place
                if path.exists():
                    os.replace(path, old)
                os.replace(tmp, path)
    except BaseException:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not path.exists():  # the new one did not take its place: the old one back
                os.replace(old, path)
        raise
    finally:
        if acc.is_main_process:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def load_checkpoint(acc, path: str | Path, steps: int) -> dict:
    """Load the checkpoint ``path`` into ``acc``'s prepared objects: its trainer state, or a
    ``CheckpointError`` (see :func:`check_checkpoint`; also a checkpoint past ``steps``, or one
    whose files cannot be loaded into this model and optimizer)."""
    path = Path(path)
    state = check_checkpoint(path)
    if state["step"] > steps:
        raise CheckpointError(f"cannot resume: the checkpoint {path} is at step {state['step']}, past this "
                              f"run's optim.steps {steps}",
                              hint=f"set optim.steps (or --steps) to at least {state['step']}")
    try:
        acc.load_state(str(path))
    except Exception as exc:  # noqa: BLE001 - torch, safetensors and pickle each raise their own
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise CheckpointError(f"cannot resume: the checkpoint {path} cannot be loaded ({detail[:300]})",
                              hint="a file in it is truncated or damaged, or it was written by another model "
                                   "or optimizer setting; resume from a checkpoint of this config, or start "
                                   "again without --resume (and with --overwrite)") from None
    return state


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class SigintStop:
    """Ctrl-C while a run trains (:meth:`installed`; signals reach the main thread only, so
    elsewhere this does nothing). The first Ctrl-C sets ``requested``: the run stops after the
    current step and saves a checkpoint there. A second one sets ``aborted`` and raises
    ``KeyboardInterrupt`` wherever the run is: it stops at once and saves nothing."""

    def __init__(self, announce: bool = True):
        self.announce = announce  # say on stderr what the first Ctrl-C does (the main process)
        self.requested = False
        self.aborted = False

    def __call__(self, signum, frame) -> None:
        if self.requested:
            self.aborted = True
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            sys.stderr.write("\nCtrl-C: stopping after this step to save a checkpoint there "
                             "(Ctrl-C again to stop at once, without one)\n")

    @contextlib.contextmanager
    def installed(self):
        if not _main_thread() or signal.getsignal(signal.SIGINT) is None:  # None: a handler not set from Python
            yield self
            return
        previous = signal.signal(signal.SIGINT, self)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C off for a few lines that must not be cut in two (a checkpoint renamed into
    place): one that arrives meanwhile is handed to the handler before, once they are done."""
    if not _main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for _ in caught:
            signal.raise_signal(signal.SIGINT)  # handled as if it came now (a handler runs before this returns)
