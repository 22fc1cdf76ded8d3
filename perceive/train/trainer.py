"""The trainer: accelerate under the hood, so one config runs on CPU, one GPU or several.

Checkpoints every ``save_every`` steps hold the model, optimizer, scheduler and RNG states
(accelerate's ``save_state``) and the step; the data order is a seeded permutation per epoch,
so a resumed run sees exactly the batches the uninterrupted run would have seen. A checkpoint is
written to ``checkpoint-N.tmp`` and renamed when complete, so a run killed while saving leaves no
truncated ``checkpoint-N``. Ctrl-C (SIGINT) finishes the current step, saves a checkpoint there
and raises :class:`TrainingInterrupted`, which names it.

A run refuses what would make it succeed on nothing: a dataset with no usable item or with more
skipped items than ``data.max_skipped_fraction``, an output folder holding another run (unless
overwritten or resumed), a ``freeze``/``trainable`` pattern that matches no parameter, a set of
patterns that leaves nothing to train, and a checkpoint that is missing or incomplete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from perceive.data.collate import Collator
from perceive.data.dataset import VPTDataset
from perceive.errors import CheckpointError, ConfigError, closest
from perceive.eval.skipped import Skipped
from perceive.model.vpt import IGNORE_INDEX
from perceive.train.config import TrainConfig

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (or another ``KeyboardInterrupt``). ``saved``: a checkpoint was
    written at ``step``, the last finished step; otherwise ``checkpoint`` is the latest earlier one
    in the output folder, or None. Resume with ``Trainer.train(resume=checkpoint)``."""

    def __init__(self, step: int, steps: int, checkpoint: Path | None, saved: bool):
        self.step, self.steps, self.checkpoint, self.saved = step, steps, checkpoint, saved
        if saved:
            msg = f"interrupted after step {step} of {steps}: saved a checkpoint to {checkpoint}"
        elif checkpoint is not None:
            msg = (f"interrupted during step {step + 1} of {steps}, with no checkpoint saved for it: "
                   f"the latest checkpoint is {checkpoint}")
        else:
            msg = f"interrupted at step {step} of {steps}, before any checkpoint was saved: nothing to resume"
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
    ``checkpoint-*``. Other files there are not the trainer's, and are left alone."""
    output = Path(output)
    if not output.is_dir():
        return []
    return sorted(p for p in output.iterdir()
                  if p.name in ("model", "history.json") or p.name.startswith("checkpoint-"))


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


class _Examples(Dataset):
    def __init__(self, ds: VPTDataset):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def build_model(cfg: TrainConfig):
    model = _base_model(cfg)
    src = cfg.model
    if src.view_scale is not None:
        model.config.view_scale = src.view_scale
    if src.action_defaults is not None:
        model.config.action_defaults = src.action_defaults
    for nb in src.add_branches:
        add_branch(model, nb)
    if src.rope_theta is not None:
        set_rope_theta(model, src.rope_theta)
    if cfg.positions is not None:
        model.config.positions = cfg.positions
    if cfg.prompts is not None:
        model.config.prompts = cfg.prompts
    if cfg.views is not None:
        model.config.views = cfg.views
    return model


def set_rope_theta(model, theta: float) -> None:
    """Give the language model a new RoPE base (its rotary table is rebuilt; weights are kept)."""
    tc = model.base.config.text_config
    tc.rope_parameters["rope_theta"] = float(theta)
    lm = model.language_model
    lm.rotary_emb = type(lm.rotary_emb)(config=tc).to(lm.rotary_emb.inv_freq.device)


def add_branch(model, nb) -> None:
    """Give ``model`` a new re-encode branch (random encoder and projector) for ``nb.action``."""
    from perceive.errors import ConfigError
    from perceive.model.branches import Branch
    from perceive.testing.tiny import tiny_vpt_config

    if nb.action in model.config.branches:
        raise ConfigError(f"model.add_branches: the model already has a {nb.action} branch",
                          hint="remove it from add_branches, or start from a model without it")
    b = tiny_vpt_config(model.tokenizer, branches=(nb.action,), hidden=model.config.hidden_size).branches[nb.action]
    update = {}
    if nb.encoder_config is not None:
        update["encoder_config"] = nb.encoder_config
        if nb.action == "dino":
            update["feature_dim"] = nb.encoder_config["hidden_size"]
    if nb.image_size is not None:
        update["image_size"] = nb.image_size
    b = b.model_copy(update=update)
    model.config.branches[nb.action] = b
    model.branches[nb.action] = Branch.build(b, model.config.hidden_size, model.config.projector_scale)


def _base_model(cfg: TrainConfig):
    from perceive.model import load_model
    from perceive.model.checkpoint import image_processor

    if cfg.model.path is not None:
        model = load_model(cfg.model.path, device="cpu", dtype="float32")
        if cfg.model.image_pixels:
            model.image_processor = image_processor(*cfg.model.image_pixels, merge=model.spatial_merge_size)
        if cfg.model.view_pixels:
            model.view_image_processor = image_processor(*cfg.model.view_pixels, merge=model.spatial_merge_size)
        return model
    from perceive.model.vpt import VPTModel
    from perceive.testing.tiny import build_tokenizer, tiny_base, tiny_vpt_config
    from perceive.train.config import TinyModel

    t = cfg.model.tiny or TinyModel()
    tok = build_tokenizer()
    base = tiny_base(tok, hidden=t.hidden, layers=t.layers, seed=t.seed, heads=t.heads, kv_heads=t.kv_heads,
                     vision_depth=t.vision_depth, vision_dim=t.vision_dim, vision_heads=t.vision_heads,
                     rope_theta=t.rope_theta, merge=t.merge).train()
    vcfg = tiny_vpt_config(tok, branches=tuple(t.branches), hidden=t.hidden)
    model = VPTModel(base, vcfg)
    model.tokenizer = tok
    model.image_processor = image_processor(t.image_min_pixels, t.image_max_pixels, merge=t.merge)
    model.view_image_processor = image_processor(t.view_min_pixels, t.view_max_pixels, merge=t.merge)
    return model


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
                               project_dir=str(cfg.output))
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
        self.collate = Collator(self.model)
        self._freeze()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.sched = self._scheduler()
        self.model, self.opt, self.sched = self.acc.prepare(self.model, self.opt, self.sched)
        self.step = 0
        self.history: list[dict] = []
        self.show_progress = progress
        self._output_ready = False  # the output folder was checked (and cleared, if asked)
        self._stop = False  # Ctrl-C asked to stop after the current step
        self._in_step = False  # model and optimizer are mid-update: no checkpoint can be taken

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

    def _scheduler(self):
        from transformers import get_scheduler

        o = self.cfg.optim
        name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[o.scheduler]
        return get_scheduler(name, self.opt, num_warmup_steps=int(o.warmup_ratio * o.steps),
                             num_training_steps=o.steps)

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
              on_step=None) -> list[dict]:
        """Train to ``optim.steps`` (or stop after step ``until``, as an interruption would).

        The output folder must not hold another run unless ``overwrite`` (its run files are
        deleted first) or ``resume`` (a checkpoint in it). Ctrl-C stops after the current step,
        saves ``checkpoint-N`` there and raises :class:`TrainingInterrupted`; a second Ctrl-C stops
        at once, without one. ``on_step(step)`` runs after each step (tests interrupt through it)."""
        cfg = self.cfg
        if not self._output_ready:
            prepare_output(cfg.output, resume, overwrite)
            self._output_ready = True
        last = min(cfg.optim.steps, until) if until is not None else cfg.optim.steps
        if resume:
            self.load(resume)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cols = [TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(), TimeRemainingColumn()]
        self._stop = self._in_step = False
        with Progress(*cols, disable=not self.show_progress or not self.acc.is_main_process) as bar, \
                self._sigint_stops():
            task = bar.add_task("train", total=cfg.optim.steps, completed=self.step, loss="-")
            try:
                self._loop(last, bar, task, on_step)
            except KeyboardInterrupt:
                raise self._interrupted(clean=not self._in_step) from None
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
                    self.sched.step()
                    self.opt.zero_grad()
                total += out.loss.item() / len(micro)
            self.step = step + 1
            rec = {"step": self.step, "loss": total, "lr": self.sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0}
            self.history.append(rec)
            self._in_step = False
            bar.update(task, completed=self.step, loss=f"{total:.4f}")
            if cfg.log_every and self.step % cfg.log_every == 0:
                self.write_log()  # headless runs can be watched through history.json
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_ds is not None:
                self.history.append({"step": self.step, "eval": self.evaluate()})
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save(cfg.output / f"checkpoint-{self.step}")
            if on_step is not None:
                on_step(self.step)
            if self._stop_requested():
                raise KeyboardInterrupt
        if self.step == cfg.optim.steps and self.eval_ds is not None and not (
                cfg.eval_every and self.step % cfg.eval_every == 0):
            self.history.append({"step": self.step, "eval": self.evaluate()})
        self.write_log()

    @contextlib.contextmanager
    def _sigint_stops(self):
        """While training: the first Ctrl-C asks to stop after the current step (so the checkpoint
        taken there resumes exactly); a second one interrupts at once."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True
            if self.acc.is_main_process:
                sys.stderr.write("\nCtrl-C: stopping after this step to save a checkpoint there "
                                 "(Ctrl-C again to stop at once, without one)\n")

        previous = signal.signal(signal.SIGINT, stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop_requested(self) -> bool:
        stop = self._stop
        if self.acc.num_processes > 1:  # every process stops after the same step
            flag = torch.tensor([1.0 if stop else 0.0], device=self.acc.device)
            stop = bool(self.acc.reduce(flag, reduction="sum").item() > 0)
        return stop

    def _interrupted(self, clean: bool) -> TrainingInterrupted:
        """After a ``KeyboardInterrupt``: between steps (``clean``), save a checkpoint at the last
        finished step; in the middle of one, the model may be half updated: point at the latest
        checkpoint already saved."""
        out = self.cfg.output
        if clean and self.step > 0:
            ckpt = out / f"checkpoint-{self.step}"
            if checkpoint_step(ckpt) is None:  # else save_every has just written it
                self.save(ckpt)
            self.write_log()
            return TrainingInterrupted(self.step, self.cfg.optim.steps, ckpt, saved=True)
        return TrainingInterrupted(self.step, self.cfg.optim.steps, latest_checkpoint(out), saved=False)

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
        """Write a checkpoint to ``path.tmp``, then rename it: a run killed while saving leaves no
        truncated ``path``. The trainer state is written last (it marks a complete checkpoint)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if self.acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({"step": self.step, "history": self.history}))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        self.acc.wait_for_everyone()

    def load(self, path: str | Path) -> None:
        path = Path(path)
        state = check_checkpoint(path)
        if state["step"] > self.cfg.optim.steps:
            raise CheckpointError(f"cannot resume: the checkpoint {path} is at step {state['step']}, past this "
                                  f"run's optim.steps {self.cfg.optim.steps}",
                                  hint=f"set optim.steps (or --steps) to at least {state['step']}")
        try:
            self.acc.load_state(str(path))
        except Exception as exc:  # noqa: BLE001 - torch, safetensors and pickle each raise their own
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise CheckpointError(f"cannot resume: the checkpoint {path} cannot be loaded ({detail[:300]})",
                                  hint="a file in it is truncated or damaged, or it was written by another model "
                                       "or optimizer setting; resume from a checkpoint of this config, or start "
                                       "again without --resume (and with --overwrite)") from None
        self.step = state["step"]
        self.history = state["history"]

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
    index): ``base.model.visual``, ``base.lm_head``, ``branches.dino.projector``, ..."""
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


def merge_lora(model) -> None:
    """Fold LoRA adapters into their base layers and put the plain layers back, so the saved base
    model is a standard transformers checkpoint."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module.get_base_layer())


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True, overwrite: bool = False):
    check_output(cfg.output, resume, overwrite)  # before the model is built
    if resume:
        check_checkpoint(resume)
    t = Trainer(cfg, progress=progress)
    t.train(resume, overwrite=overwrite)
    out = t.save_model()
    return t, out


__all__ = ["Trainer", "TrainingInterrupted", "build_model", "check_checkpoint", "check_output", "latest_checkpoint",
           "merge_lora", "prepare_output", "token_accuracy", "train"]
