"""The trainer: accelerate under the hood, so one config runs on CPU, one GPU or several.

Checkpoints every ``save_every`` steps hold the model, optimizer, scheduler and RNG states
(accelerate's ``save_state``) and the step; the data order is a seeded permutation per epoch,
so a resumed run sees exactly the batches the uninterrupted run would have seen. Ctrl-C (SIGINT)
finishes the current step, saves a checkpoint there and raises :class:`TrainingInterrupted`,
which names it; a second Ctrl-C stops at once and saves nothing. The output folder, checkpoints
(written to ``checkpoint-N.tmp`` and renamed when complete) and Ctrl-C are
:mod:`perceive.train.checkpoints`.

A run refuses what would make it succeed on nothing: a dataset with no usable item or with more
skipped items than ``data.max_skipped_fraction``, an output folder holding another run (unless
overwritten or resumed), a ``freeze``/``trainable`` pattern that matches no parameter, a set of
patterns that leaves nothing to train, and a checkpoint that is missing or incomplete.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from perceive.data.collate import Collator
from perceive.data.dataset import VPTDataset
from perceive.data.skipped import Skipped
from perceive.errors import ConfigError, closest
from perceive.model.vpt import IGNORE_INDEX
from perceive.train.build import add_branch, build_model, merge_lora, set_rope_theta  # noqa: F401 - as before
from perceive.train.checkpoints import (  # noqa: F401 - importable from here, as before the split
    SigintStop,
    TrainingInterrupted,
    check_checkpoint,
    check_output,
    checkpoint_step,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prepare_output,
    run_files,
    save_checkpoint,
)
from perceive.train.config import TrainConfig
from perceive.train.eval_log import append_eval, eval_line, rewrite_evals
from perceive.train.resume import config_record, resume_changes
from perceive.train.trigger_prompts import undeclared_triggers


def perception_ids(model) -> dict[int, str]:
    """Ids of the perception tokens whose accuracy the evaluation reports (as the reference logs)."""
    out = {}
    c = model.config
    if c.region is not None:
        out.update({c.region.start_id: "region_start", c.region.end_id: "region_end"})
        out.update({i: f"x_{k}" for k, i in enumerate(c.region.x_ids)})
        out.update({i: f"y_{k}" for k, i in enumerate(c.region.y_ids)})
    for b in c.branches.values():
        out.update({b.start_id: f"{b.action}_start", b.end_id: f"{b.action}_end"})
    return out


def digit_ids(model) -> set[int]:
    tok = model.tokenizer
    return {i for i in (tok.convert_tokens_to_ids(str(d)) for d in range(10)) if i is not None}


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, ids: dict[int, str],
                   digits: set[int] = frozenset()) -> dict[str, list[int]]:
    """Correct/total counts: overall, over perception tokens, per perception token, over digit
    targets (the number-card answers), and over the region span's first cell (the two tokens after
    ``<|region_token_start|>``) apart from its later cells. Per-token counts mix the two roles, and
    a later cell is easy given the first (it is the first plus the card's extent), so only
    ``region_first_cell`` says whether the model localises."""
    pred = logits[:, :-1].argmax(-1)
    tgt = labels[:, 1:]
    valid = tgt != IGNORE_INDEX
    counts = {"all": [int((pred == tgt)[valid].sum()), int(valid.sum())]}
    pmask = torch.zeros_like(valid)
    for i, name in ids.items():
        m = tgt == i
        if m.any():
            counts[name] = [int((pred == tgt)[m].sum()), int(m.sum())]
            pmask |= m
    counts["perception"] = [int((pred == tgt)[pmask].sum()), int(pmask.sum())]
    names = {n: i for i, n in ids.items()}
    if "region_start" in names:
        first, later = _region_roles(tgt, names["region_start"], names.get("region_end"))
        for key, m in (("region_first_cell", first), ("region_later_cells", later)):
            if m.any():
                counts[key] = [int((pred == tgt)[m].sum()), int(m.sum())]
    if digits:
        dmask = torch.zeros_like(valid)
        for i in digits:
            dmask |= tgt == i
        counts["digits"] = [int((pred == tgt)[dmask].sum()), int(dmask.sum())]
    return counts


def _region_roles(tgt: torch.Tensor, start: int, end: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks over ``tgt`` ``(B, L)``: the two targets after each region start, and the targets
    from there to the region end."""
    first = torch.zeros_like(tgt, dtype=torch.bool)
    later = torch.zeros_like(first)
    for b, j in (tgt == start).nonzero().tolist():
        first[b, j + 1:j + 3] = True
        k = j + 3
        while k < tgt.shape[1] and int(tgt[b, k]) not in (end, IGNORE_INDEX):
            later[b, k] = True
            k += 1
    return first, later


class Trainer:
    def __init__(self, cfg: TrainConfig, model=None, progress: bool = True):
        from accelerate import Accelerator

        self.cfg = cfg
        prec = cfg.precision
        if prec == "auto":
            prec = "bf16" if torch.cuda.is_available() else "no"
        self.acc = Accelerator(mixed_precision=prec, gradient_accumulation_steps=cfg.optim.grad_accum,
                               project_dir=str(cfg.output), kwargs_handlers=self.accelerator_kwargs())
        # the data first: a set with nothing usable (or too little) fails before a model is built
        self.train_ds = VPTDataset(cfg.data.train, policy=cfg.data.policy)
        self.eval_ds = VPTDataset(cfg.data.eval, policy=cfg.data.policy) if cfg.data.eval else None
        #: the skipped items of each set ("train", "eval"), below the limit (else an error)
        self.skips = {"train": Skipped.of(self.train_ds)}
        if self.eval_ds is not None:
            self.skips["eval"] = Skipped.of(self.eval_ds)
        for skipped in self.skips.values():
            skipped.check(cfg.data.max_skipped_fraction, setting="data.max_skipped_fraction")
        self.skipped = [f"item {i}: {'; '.join(p)}" for i, p in self.skips["train"].items]
        torch.manual_seed(cfg.optim.seed)
        self.model = model if model is not None else build_model(cfg)
        #: trigger prompts the training data uses that the trained model will not declare (warnings)
        self.prompt_warnings = undeclared_triggers([item for _, item in self.train_ds.items], self.model.config.prompts,
                                                   str(cfg.data.train), from_config=cfg.prompts is not None)
        self.collate = Collator(self.model)
        self._freeze()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.sched = self._scheduler()
        self.model, self.opt, self.sched = self.acc.prepare(self.model, self.opt, self.sched)
        self.step = 0
        self.history: list[dict] = []
        #: what the resumed run changed from its checkpoint's config (None: the checkpoint stores none)
        self.resume_changes: list | None = []
        self.show_progress = progress  # the progress bar, and a line per evaluation
        self._output_ready = False  # the output folder was checked (and cleared, if asked)
        self._sigint = SigintStop(announce=self.acc.is_main_process)  # what Ctrl-C asked for
        self._in_step = False  # model and optimizer are mid-update: no checkpoint can be taken

    #: the progress bar's figure before the first step
    bar_label = "loss -"

    def accelerator_kwargs(self) -> list:
        """accelerate's kwargs handlers for this trainer (none for supervised training)."""
        return []

    def _freeze(self) -> None:
        cfg, m = self.cfg, self.model
        if cfg.lora is not None:
            from peft import LoraConfig, inject_adapter_in_model

            lc = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                            target_modules=cfg.lora.target_modules)
            inject_adapter_in_model(lc, m.base.model.language_model)
        trainable = cfg.trainable
        if cfg.stage == "alignment" and trainable is None:
            trainable = [f"branches.{b}.projector" for b in m.config.branches]  # §3.1: only the projector
        names = [n for n, _ in m.named_parameters()]
        for key, patterns in (("trainable", cfg.trainable or []), ("freeze", cfg.freeze)):
            for pattern in patterns:
                if not any(n.startswith(pattern) for n in names):
                    raise ConfigError(f"{cfg.source}: {key}: {pattern!r} matches no parameter of the model "
                                      f"(a pattern is a prefix of parameter names)", hint=_prefix_hint(pattern, names))
        for name, p in m.named_parameters():
            train = True
            if trainable is not None:
                train = any(name.startswith(t) for t in trainable)
            if any(name.startswith(f) for f in cfg.freeze):
                train = False
            if cfg.lora is not None and name.startswith("base.model.language_model") and "lora_" not in name:
                train = False
            p.requires_grad_(train)
        if not any(p.requires_grad for p in m.parameters()):
            if cfg.stage == "alignment" and cfg.trainable is None and not m.config.branches:
                why, hint = ("stage alignment trains only the re-encode branches' projectors, and this model has no "
                             "branch", "add one (model.add_branches), use stage: instruct, or list what trains in "
                                       "trainable:")
            else:
                why = ", ".join(f"{k}: {v}" for k, v in (("trainable", cfg.trainable), ("freeze", cfg.freeze or None),
                                                          ("lora", "on" if cfg.lora else None)) if v is not None)
                why, hint = (f"{why} leave(s) no parameter to train",
                             "trainable: names what trains, freeze: what is then kept fixed (and lora: trains only "
                             "the adapters of the language model); " + _prefix_hint("", names))
            raise ConfigError(f"{cfg.source}: nothing to train: {why}", hint=hint)

    @property
    def optimizer_steps(self) -> int:
        """How many optimizer steps the run takes (the schedule's length)."""
        return self.cfg.optim.steps

    def _scheduler(self):
        from transformers import get_scheduler

        o, total = self.cfg.optim, self.optimizer_steps
        name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[o.scheduler]
        return get_scheduler(name, self.opt, num_warmup_steps=int(o.warmup_ratio * total), num_training_steps=total)

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.optim.seed * 1000 + epoch)
        return torch.randperm(len(self.train_ds), generator=g).tolist()

    def batches(self, start_step: int):
        """The batch for every step from ``start_step``: deterministic, so resuming is exact."""
        bs = self.cfg.optim.batch_size * self.cfg.optim.grad_accum * self.acc.num_processes
        per_epoch = max(1, len(self.train_ds) // bs)
        step = start_step
        while True:
            epoch, k = divmod(step, per_epoch)
            order = self._order(epoch)
            idx = order[k * bs:(k + 1) * bs]
            # several processes (accelerate launch): each takes its share of the step's examples
            idx = idx[self.acc.process_index::self.acc.num_processes]
            micro = [idx[i:i + self.cfg.optim.batch_size] for i in range(0, len(idx), self.cfg.optim.batch_size)]
            yield step, [self.collate([self.train_ds[i] for i in m]) for m in micro]
            step += 1

    def forward(self, batch):
        run = 1 if self.cfg.stage == "alignment" else 2
        return self.model(**batch, num_inner_forward_run=run, para_mask_id=self.cfg.para_mask_id if run == 2 else 0,
                          para_mask_ratio=self.cfg.para_mask_ratio, reference_no_grad=self.cfg.reference_no_grad)

    def train(self, resume: str | Path | None = None, until: int | None = None, overwrite: bool = False,
              on_step=None, allow_changes: bool = False) -> list[dict]:
        """Train to ``optim.steps`` (or stop after step ``until``, as an interruption would).

        The output folder must not hold another run unless ``overwrite`` (its run files are
        deleted first) or ``resume`` (a checkpoint in it). A resumed run whose config trains
        another model or on other data than the checkpoint's is refused unless ``allow_changes``;
        its other changes are in :attr:`resume_changes` (see :mod:`perceive.train.resume`). Each
        evaluation is appended to ``OUTPUT/evals.jsonl`` (and printed as one line, with
        ``progress``). Ctrl-C stops after the current step,
        saves ``checkpoint-N`` there and raises :class:`TrainingInterrupted`; a second Ctrl-C stops
        at once, without one, wherever it lands: in a step, an evaluation, or a save (whose
        ``checkpoint-N.tmp`` is removed). Another ``KeyboardInterrupt`` counts as a first Ctrl-C
        between steps, as a second in the middle of one. ``on_step(step)`` runs after each step
        (tests interrupt through it)."""
        cfg = self.cfg
        if not self._output_ready:
            prepare_output(cfg.output, resume, overwrite)
            self._output_ready = True
        last = min(cfg.optim.steps, until) if until is not None else cfg.optim.steps
        if resume:
            self.load(resume, allow_changes)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cols = [TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(), TimeRemainingColumn()]
        self._sigint = SigintStop(announce=self.acc.is_main_process)
        self._in_step = False
        stopped = None
        with Progress(*cols, disable=not self.show_progress or not self.acc.is_main_process) as bar, \
                self._sigint.installed():
            task = bar.add_task("train", total=cfg.optim.steps, completed=self.step, loss=self.bar_label)
            try:
                self._loop(last, bar, task, on_step)
            except KeyboardInterrupt:
                stopped = self._interrupted(during_step=self._in_step, at_once=self._sigint.aborted)
        if stopped is not None:
            raise stopped from None
        return self.history

    def _loop(self, last: int, bar, task, on_step) -> None:
        cfg = self.cfg
        self.model.train()
        for step, micro in self.batches(self.step):
            if step >= last:
                break
            t0 = time.perf_counter()
            total = 0.0
            self._in_step = True
            for batch in micro:
                with self.acc.accumulate(self.model):
                    # draws of the paragraph mask come from the step's own generator
                    torch.manual_seed(cfg.optim.seed * 100003 + step)
                    out = self.forward(batch)
                    self.acc.backward(out.loss)
                    if self.acc.sync_gradients and cfg.optim.max_grad_norm:
                        self.acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
                    self.opt.step()
                    if self.acc.sync_gradients:
                        # the schedule itself: accelerate's wrapper would step it once per process, and
                        # optim.steps counts steps of all processes together
                        getattr(self.sched, "scheduler", self.sched).step()
                    self.opt.zero_grad()
                total += out.loss.item() / len(micro)
            self.step = step + 1
            rec = {"step": self.step, "loss": total, "lr": self.sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0}
            self.history.append(rec)
            self._in_step = False
            bar.update(task, completed=self.step, loss=f"loss {total:.4f}")
            if cfg.log_every and self.step % cfg.log_every == 0:
                self.write_log()  # headless runs can be watched through history.json
            self._after_step(bar, on_step)
        self._finish(bar)

    def _after_step(self, bar, on_step) -> None:
        """After each step: evaluate, save, call ``on_step``, stop if Ctrl-C asked to."""
        cfg = self.cfg
        if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_ds is not None:
            self._evaluate_and_report(bar)
        if cfg.save_every and self.step % cfg.save_every == 0:
            self.save(cfg.output / f"checkpoint-{self.step}")
        if on_step is not None:
            on_step(self.step)
        if self._stop_requested():
            raise KeyboardInterrupt

    def _finish(self, bar) -> None:
        """At the last step: the final evaluation (unless ``eval_every`` just made it), the log."""
        cfg = self.cfg
        if self.step == cfg.optim.steps and self.eval_ds is not None and not (
                cfg.eval_every and self.step % cfg.eval_every == 0):
            self._evaluate_and_report(bar)
        self.write_log()

    def _evaluate_and_report(self, bar) -> None:
        """Evaluate at this step: the record joins the history and ``OUTPUT/evals.jsonl``, and one
        line of it goes above the progress bar."""
        record = self.evaluate()
        self.history.append({"step": self.step, "eval": record})
        if self.acc.is_main_process:
            append_eval(self.cfg.output, self.step, record)
            if self.show_progress:
                bar.console.print(eval_line(self.step, record), markup=False, highlight=False, soft_wrap=True)

    def _stop_requested(self) -> bool:
        stop = self._sigint.requested
        if self.acc.num_processes > 1:  # every process stops after the same step
            flag = torch.tensor([1.0 if stop else 0.0], device=self.acc.device)
            stop = bool(self.acc.reduce(flag, reduction="sum").item() > 0)
        return stop

    def _interrupted(self, during_step: bool, at_once: bool) -> TrainingInterrupted:
        """After a ``KeyboardInterrupt``: between steps, save a checkpoint at the last finished
        step. In the middle of one (the model may be half updated), or on a second Ctrl-C
        (``at_once``: wherever it landed), or on one while that checkpoint is saved: save nothing,
        and point at the latest checkpoint already saved."""
        out, steps = self.cfg.output, self.cfg.optim.steps
        if not (during_step or at_once) and self.step > 0:
            ckpt = out / f"checkpoint-{self.step}"
            try:
                if checkpoint_step(ckpt) is None:  # else save_every has just written it
                    self.save(ckpt)
            except KeyboardInterrupt:  # a second Ctrl-C while saving: its .tmp is gone
                return TrainingInterrupted(self.step, steps, latest_checkpoint(out), saved=False, during_step=False)
            with contextlib.suppress(KeyboardInterrupt):  # (the checkpoint holds the history too)
                self.write_log()
            return TrainingInterrupted(self.step, steps, ckpt, saved=True)
        return TrainingInterrupted(self.step, steps, latest_checkpoint(out), saved=False, during_step=during_step)

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        ids = perception_ids(self.acc.unwrap_model(self.model))
        digits = digit_ids(self.acc.unwrap_model(self.model))
        counts: dict[str, list[int]] = {}
        losses = []
        n = min(len(self.eval_ds), self.cfg.data.max_eval_samples)
        bs = self.cfg.optim.batch_size
        for i in range(0, n, bs):
            batch = self.collate([self.eval_ds[k] for k in range(i, min(n, i + bs))])
            out = self.model(**batch, num_inner_forward_run=1 if self.cfg.stage == "alignment" else 2,
                             para_mask_id=0)
            losses.append(out.loss.item())
            for k, (c, t) in token_accuracy(out.logits, batch["labels"], ids, digits).items():
                counts.setdefault(k, [0, 0])
                counts[k][0] += c
                counts[k][1] += t
        self.model.train()
        acc = {k: c / t for k, (c, t) in counts.items() if t}
        return {"loss": sum(losses) / max(1, len(losses)), "token_accuracy": acc, "samples": n}

    def save(self, path: Path) -> None:
        """Write a checkpoint at this step to ``path`` (through ``path.tmp``: see
        :func:`~perceive.train.checkpoints.save_checkpoint`)."""
        save_checkpoint(self.acc, path, {"step": self.step, "history": self.history, "config": config_record(self.cfg)})

    def load(self, path: str | Path, allow_changes: bool = False) -> None:
        """Continue from the checkpoint ``path``: its model, optimizer, schedule, RNG, step and
        history. Its config is compared with this run's first (see :mod:`perceive.train.resume`)."""
        self.resume_changes = resume_changes(path, check_checkpoint(path), self.cfg, allow_changes)
        state = load_checkpoint(self.acc, path, self.cfg.optim.steps)
        self._set_optim_settings()
        self.step = state["step"]
        self.history = state["history"]
        if self.acc.is_main_process:
            rewrite_evals(self.cfg.output, self.history)

    def _set_optim_settings(self) -> None:
        """After loading a checkpoint: its optimizer and schedule state hold the learning rate and
        weight decay of the run that saved it, and would silently keep them; this run's apply from
        here on (the schedule's shape, ``steps``, ``warmup_ratio`` and ``scheduler``, already
        comes from this config). Unchanged settings give the same numbers, so a resume stays exact."""
        o = self.cfg.optim
        sched = getattr(self.sched, "scheduler", self.sched)  # under accelerate's wrapper
        sched.base_lrs = [o.lr for _ in sched.base_lrs]
        for group, factor in zip(self.opt.param_groups, sched.lr_lambdas, strict=True):
            group["initial_lr"] = o.lr
            group["weight_decay"] = o.weight_decay
            group["lr"] = o.lr * factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.opt.param_groups]

    def write_log(self) -> None:
        self.cfg.output.mkdir(parents=True, exist_ok=True)
        (self.cfg.output / "history.json").write_text(json.dumps(self.history, indent=1))

    def save_model(self, path: str | Path | None = None) -> Path:
        from perceive.model import save_model

        model = self.acc.unwrap_model(self.model)
        if self.cfg.lora is not None:
            merge_lora(model)
        return save_model(model, path or self.cfg.output / "model")


def _prefixes(names: list[str], depth: int = 3) -> list[str]:
    """Module-name prefixes of parameter names, up to ``depth`` parts (and before any layer
    index): ``base.model.visual``, ``base.lm_head``, ``branches.NAME.projector``, ..."""
    out: dict[str, None] = {}
    for n in names:
        keep = []
        for part in n.split(".")[:-1][:depth]:
            if part.isdigit():
                break
            keep.append(part)
        out[".".join(keep) or n] = None
    return list(out)


def _prefix_hint(pattern: str, names: list[str]) -> str:
    every = {".".join(n.split(".")[:k]) for n in names for k in range(1, n.count(".") + 2)}
    near = closest(pattern, every) if pattern else []
    known = _prefixes(names)
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    mean = ("did you mean " + " or ".join(repr(x) for x in near) + "? ") if near else ""
    return f"{mean}the model's parameter names start with: {shown}"


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True, overwrite: bool = False,
          allow_changes: bool = False):
    check_output(cfg.output, resume, overwrite)  # before the model is built
    if resume:
        resume_changes(resume, check_checkpoint(resume), cfg, allow_changes)
    t = Trainer(cfg, progress=progress)
    t.train(resume, overwrite=overwrite, allow_changes=allow_changes)
    out = t.save_model()
    return t, out


__all__ = ["Trainer", "TrainingInterrupted", "build_model", "check_checkpoint", "check_output", "latest_checkpoint",
           "merge_lora", "prepare_output", "token_accuracy", "train"]
