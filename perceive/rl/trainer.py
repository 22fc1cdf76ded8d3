"""The GRPO trainer: rollouts from the perception loop, rewards from plugins, the update from
supervised training's forward (:mod:`perceive.rl.trajectory`).

It is :class:`perceive.train.Trainer` with another step: the same accelerate set-up (CPU, one GPU
or several processes), model building, LoRA, freezing, optimizer, schedule, checkpoints,
Ctrl-C handling and exact resume. A step: take ``prompts_per_step`` prompts (a seeded order,
epoch by epoch), sample ``group_size`` rollouts of each, score them, turn the rewards into group
advantages, and take ``loss.inner_epochs`` optimizer steps on the batch. Under ``accelerate
launch`` each process takes whole groups (prompt slots ``rank, rank + world, ...``), and the
loss's denominators are the step's, across processes, so the update equals the one-process one.

Why not TRL's ``GRPOTrainer``: see docs/how-to/train-with-rewards.md ("Why perceive has its own
trainer"): its loss forward is the stock model's, on prompt and completion ids, and cannot show a
trajectory's crops and re-encoded features where the loop showed them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import torch

from perceive.errors import ConfigError, PerceiveError
from perceive.loop.sampling import Sampler
from perceive.rl.config import GRPOConfig, Reference
from perceive.rl.loss import Denominators, TokenStats, advantages, policy_loss
from perceive.rl.rewards import pick_rewards, rollout_rewards
from perceive.rl.rollout import Prompt, read_prompt, roll, rollout_loop
from perceive.rl.telemetry import append_telemetry, console_line, floor_warning, rollout_metrics, write_telemetry
from perceive.rl.trajectory import Trajectory, score
from perceive.trace import EventType, FinishReason
from perceive.train.trainer import Trainer

#: finish reasons of a trajectory cut by a budget (over-turn: masked, not punished)
CUT = (FinishReason.MAX_NEW_TOKENS, FinishReason.CONTEXT_FULL)


#: finish reasons of a rollout that a perception action (a plugin), not the policy, ended
FAILED = (FinishReason.ACTION_FAILED, FinishReason.ACTION_TIMEOUT, FinishReason.OBSERVATION_INVALID,
          FinishReason.GRAPH_ERROR, FinishReason.ERROR, FinishReason.DEADLINE)


def failed_rollout(t: Trajectory) -> bool:
    return t.finished.finish_reason in FAILED


def truncated(t: Trajectory) -> bool:
    """Cut by the token or context budget, or a call went unanswered for the hop budget."""
    d = t.finished
    return d.finish_reason in CUT or any(ev.get("type") == EventType.BUDGET_EXHAUSTED for ev in d.trace.events)


@contextlib.contextmanager
def adapters_disabled(model):
    """The policy with its LoRA adapters switched off: the base model, as a KL reference."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


class GRPOTrainer(Trainer):
    bar_label = "reward -"

    def __init__(self, cfg: GRPOConfig, model=None, progress: bool = True, registry=None):
        from perceive.plugins import get_registry

        self.registry = registry or get_registry()
        self.rewards = pick_rewards(cfg.rewards, self.registry, cfg.source)  # a wrong name fails before the model
        super().__init__(cfg, model, progress)
        if cfg.rollout.prompts_per_step % self.acc.num_processes:
            raise ConfigError(f"{cfg.source}: rollout.prompts_per_step ({cfg.rollout.prompts_per_step}) must be a "
                              f"multiple of the {self.acc.num_processes} processes (each takes whole groups)",
                              hint=f"set rollout.prompts_per_step to {self.acc.num_processes} or a multiple")
        policy = self.policy
        self.loop = rollout_loop(policy, cfg, self.registry)
        self.eval_loop = rollout_loop(policy, cfg, self.registry, greedy=True) if self.eval_ds is not None else None
        r = cfg.rollout
        self.warpers = Sampler(True, r.temperature, r.top_k, r.top_p).warpers
        self.reference = self._reference()
        self._below_floor = False  # the console warns once each time tool use falls below the floor
        #: prompts set items whose image could not be read (item -> why): skipped, reported
        self.unreadable: dict[int, str] = {}

    def _freeze(self) -> None:
        """As supervised training freezes, except that with ``lora:`` and no ``trainable:`` only the
        adapters train (then the adapters switched off are exactly the starting model, the KL
        reference). A KL reference of the adapters off while other parameters train is refused."""
        super()._freeze()
        cfg = self.cfg
        for name, p in self.model.named_parameters():  # the update projects the rollout's features again
            if name.startswith("branches.") and ".encoder." in name:
                p.requires_grad_(False)
        if cfg.lora is not None and cfg.trainable is None:
            for name, p in self.model.named_parameters():
                if "lora_" not in name:
                    p.requires_grad_(False)
        if cfg.reference is Reference.ADAPTER_DISABLED:
            others = [n for n, p in self.model.named_parameters() if p.requires_grad and "lora_" not in n]
            if others:
                raise ConfigError(f"{cfg.source}: loss.reference: adapter_disabled measures KL against the policy with "
                                  f"its adapters off, but {len(others)} other parameters train too ({others[0]}, ...)",
                                  hint="use loss.reference: frozen, or let only the adapters train (no trainable:)")

    def accelerator_kwargs(self) -> list:
        # a micro-batch without a re-encode span leaves the branch's projector unused
        from accelerate.utils import DistributedDataParallelKwargs

        return [DistributedDataParallelKwargs(find_unused_parameters=True)]

    @property
    def policy(self):
        return self.acc.unwrap_model(self.model)

    @property
    def optimizer_steps(self) -> int:
        return self.cfg.optim.steps * self.cfg.loss.inner_epochs  # each rollout step takes inner_epochs

    def _reference(self):
        """The KL reference: a frozen copy of the starting model (built again from the config, so a
        resumed run has the same one), the policy with adapters off, or None (no KL term)."""
        kind = self.cfg.reference
        if kind is Reference.FROZEN:
            from perceive.train.build import build_model

            torch.manual_seed(self.cfg.optim.seed)
            ref = build_model(self.cfg).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            return ref.to(self.acc.device)
        return kind  # ADAPTER_DISABLED or None

    # -- the step --------------------------------------------------------------------------------

    def step_prompts(self, step: int) -> list[Prompt]:
        """This process's prompts of ``step``: the step's ``prompts_per_step`` slots of a seeded
        per-epoch order of the set, those with ``slot % world == rank``."""
        n, per = len(self.train_ds), self.cfg.rollout.prompts_per_step
        out = []
        for slot in range(self.acc.process_index, per, self.acc.num_processes):
            at = step * per + slot
            for tries in range(n):  # an item whose image cannot be read gives its slot to the next one
                epoch, k = divmod(at + tries * per * 1009, n)
                try:
                    out.append(read_prompt(self.train_ds, self._order(epoch)[k], slot))
                    break
                except (PerceiveError, OSError, ValueError) as exc:
                    self.unreadable.setdefault(self._order(epoch)[k], str(exc))
        return out

    def _gathered(self, rows: list) -> list:
        if self.acc.num_processes == 1:
            return rows
        from accelerate.utils import gather_object

        return gather_object(rows)

    def _denominators(self, trajs: list[Trajectory], keep: list[bool]) -> Denominators:
        tokens = sum(t.num_generated for t, k in zip(trajs, keep, strict=True) if k)
        counts = torch.tensor([float(sum(keep)), float(tokens)])
        if self.acc.num_processes > 1:
            counts = self.acc.reduce(counts.to(self.acc.device), reduction="sum").cpu()
        return Denominators(max(1, int(counts[0])), max(1, int(counts[1])), self.cfg.rollout.max_new_tokens)

    @torch.no_grad()
    def _ref_logprobs(self, trajs: list[Trajectory]) -> list[torch.Tensor] | None:
        if self.reference is None:
            return None
        with self.acc.autocast():
            return self._ref_batches(trajs)

    def _ref_batches(self, trajs: list[Trajectory]) -> list[torch.Tensor]:
        bs, out = self.cfg.optim.batch_size, []
        for i in range(0, len(trajs), bs):
            if self.reference is Reference.ADAPTER_DISABLED:
                with adapters_disabled(self.policy):
                    out += score(self.policy, trajs[i:i + bs], self.warpers).logprobs
            else:
                out += score(self.reference, trajs[i:i + bs], self.warpers).logprobs
        return out

    def _update(self, trajs: list[Trajectory], adv: torch.Tensor, keep: list[bool], den: Denominators,
                ref: list[torch.Tensor] | None) -> dict:
        """``loss.inner_epochs`` optimizer steps on the batch; telemetry of the first pass."""
        cfg, bs = self.cfg, self.cfg.optim.batch_size
        old = [torch.tensor(t.old_logprobs, device=self.acc.device) for t in trajs]
        micro = [list(range(i, min(len(trajs), i + bs))) for i in range(0, len(trajs), bs)] or [[]]
        stats, entropy, grad_norm = TokenStats(), [], None
        lr = self.opt.param_groups[0]["lr"]  # the rate this step's updates use
        self.model.train()
        for epoch in range(cfg.loss.inner_epochs):
            for k, idx in enumerate(micro):
                last = k == len(micro) - 1
                sync = contextlib.nullcontext() if last or self.acc.num_processes == 1 else self.acc.no_sync(self.model)
                with sync:
                    batch = [trajs[i] for i in idx]
                    scored = score(self.policy, batch, self.warpers, forward=self.model)
                    loss = policy_loss(scored.logprobs, [old[i] for i in idx], adv[idx], [keep[i] for i in idx],
                                       cfg.loss, den, None if ref is None else [ref[i] for i in idx], stats)
                    # every process backpropagates (DDP syncs), through a graph even when all is masked
                    loss = loss + 0.0 * sum(lp[torch.isfinite(lp)].sum() for lp in scored.logprobs)
                    self.acc.backward(loss * self.acc.num_processes)  # DDP averages: the shares add up
                    if epoch == 0:
                        entropy += [e for e, i in zip(scored.entropy, idx, strict=True) if keep[i]]
            grad_norm, skipped = self._optimizer_step()
        ent = torch.cat(entropy) if entropy else torch.zeros(0)
        # every process's tokens: (clipped, kl, tokens) over all epochs, (entropy sum, count) over the first
        sums = torch.tensor([stats.clipped, stats.kl, float(stats.tokens), float(ent.sum()), float(ent.numel())])
        if self.acc.num_processes > 1:
            sums = self.acc.reduce(sums.to(self.acc.device), reduction="sum").cpu()
        clipped, kl, tokens, ent_sum, ent_n = sums.tolist()
        return {"lr": lr, "entropy": ent_sum / ent_n if ent_n else None, "grad_norm": grad_norm, "skipped": skipped,
                "clip_fraction": clipped / tokens if tokens else None,
                "kl": kl / tokens if tokens and ref is not None else None}

    def _optimizer_step(self) -> tuple[float, bool]:
        """Clip, step the optimizer and the schedule once: ``(gradient norm, skipped)``. A gradient
        that is not finite is dropped, with its step (the weights would turn NaN)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.optim.max_grad_norm:
            norm = self.acc.clip_grad_norm_(params, self.cfg.optim.max_grad_norm)
        else:
            grads = [p.grad.norm() for p in params if p.grad is not None]
            norm = torch.norm(torch.stack(grads)) if grads else torch.zeros(())
        skipped = not bool(torch.isfinite(torch.as_tensor(norm)))
        if not skipped:
            self.opt.step()
        # the schedule itself: accelerate's wrapper steps it once per process (a schedule counted in
        # batches per process), and a GRPO step is one step whatever the processes
        getattr(self.sched, "scheduler", self.sched).step()
        self.opt.zero_grad()
        return float(norm), skipped

    def rl_step(self, step: int) -> dict:
        """One step: rollouts, rewards, advantages, the update. Returns its telemetry record."""
        cfg, G = self.cfg, self.cfg.rollout.group_size
        t0 = time.perf_counter()
        prompts = self.step_prompts(step)
        self.model.eval()
        with self.acc.autocast():  # the precision the update's forward runs in: the ratio starts at 1
            trajs = roll(self.loop, prompts, G, step, cfg.rollout.seed)
        t_roll = time.perf_counter() - t0
        each = [p for p in prompts for _ in range(G)]
        total, parts = rollout_rewards(self.rewards, each, trajs)
        cut = [truncated(t) for t in trajs]
        failed = [failed_rollout(t) for t in trajs]
        # a plugin's failure is not the policy's doing: it neither teaches nor punishes
        keep = [not ((c and cfg.loss.mask_truncated) or f) for c, f in zip(cut, failed, strict=True)]
        adv = advantages(torch.tensor(total), G, cfg.loss.advantage, torch.tensor(keep)).to(self.acc.device)
        den = self._denominators(trajs, keep)
        t1 = time.perf_counter()
        self._in_step = True
        update = self._update(trajs, adv, keep, den, self._ref_logprobs(trajs))
        t_update = time.perf_counter() - t1
        rows = self._gathered([{"prompt": _light(p), "traj_done": t.finished, "total": r, "cut": c, "failed": f,
                                "masked": not k, "parts": {name: v[i] for name, v in parts.items()}}
                               for i, (p, t, r, c, f, k) in enumerate(zip(each, trajs, total, cut, failed, keep,
                                                                           strict=True))])
        return self._record(step, rows, update, t_roll, t_update)

    def _record(self, step: int, rows: list[dict], update: dict, t_roll: float, t_update: float) -> dict:
        G = self.cfg.rollout.group_size
        trajs = [_Done(r["traj_done"]) for r in rows]
        parts = {k: [r["parts"][k] for r in rows] for k in (rows[0]["parts"] if rows else {})}
        totals = [r["total"] for r in rows]
        rec = {"step": step + 1,
               **rollout_metrics([r["prompt"] for r in rows], trajs, totals, parts), **update}
        groups = [totals[i:i + G] for i in range(0, len(totals), G)]
        kept = [not r["masked"] for r in rows]
        kept_groups = [[t for t, k in zip(totals[i:i + G], kept[i:i + G], strict=True) if k]
                       for i in range(0, len(totals), G)]
        # a group with fewer than two kept members teaches nothing either
        rec["zero_advantage_fraction"] = sum(len(g) < 2 or max(g) == min(g) for g in kept_groups) / max(1, len(groups))
        rec["truncated_fraction"] = sum(r["cut"] for r in rows) / max(1, len(rows))
        rec["failed_fraction"] = sum(r["failed"] for r in rows) / max(1, len(rows))
        rec["rollout_samples_per_s"] = len(rows) / max(t_roll, 1e-9)
        rec["update_samples_per_s"] = len(rows) * self.cfg.loss.inner_epochs / max(t_update, 1e-9)
        rec["tool_use_floor"] = self.cfg.telemetry.tool_use_floor
        warning = floor_warning(rec["tool_use_rate"], rec["tool_use_floor"], step + 1, self.cfg.rewards)
        rec["warnings"] = [warning] if warning else []
        if rec["failed_fraction"]:
            reasons = sorted({str(r["traj_done"].finish_reason) for r in rows if r["failed"]})
            rec["warnings"].append(f"step {step + 1}: {rec['failed_fraction']:.3f} of the rollouts failed in a "
                                   f"perception action ({', '.join(reasons)}): left out of the loss; see the traces "
                                   "with perceive ask on the same inputs")
        if rows and not any(kept):
            rec["warnings"].append(f"step {step + 1}: every rollout was left out of the loss (cut by a budget or "
                                   "failed): nothing was learned; raise rollout.max_new_tokens or max_hops, or set "
                                   "loss.mask_truncated: false")
        if self.unreadable:
            rec["unreadable_prompts"] = len(self.unreadable)
        if update.get("skipped"):
            rec["warnings"].append(f"step {step + 1}: the gradient was not finite: the optimizer step was skipped")
        return rec

    def _loop(self, last: int, bar, task, on_step) -> None:
        cfg = self.cfg
        t_start = time.perf_counter() - (self.history[-1].get("telemetry", {}).get("wall_s", 0.0)
                                         if self.history else 0.0)
        while self.step < last:
            rec = self.rl_step(self.step)
            rec["wall_s"] = time.perf_counter() - t_start
            self.step = rec["step"]
            self.history.append({"step": self.step, "telemetry": rec})
            self._in_step = False
            if self.acc.is_main_process:
                append_telemetry(cfg.output, rec)
                if rec["warnings"] and not self._below_floor:
                    for w in rec["warnings"]:
                        bar.console.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
                self._below_floor = bool(rec["warnings"])
                if self.show_progress and cfg.log_every and self.step % cfg.log_every == 0:
                    bar.console.print(console_line(rec), markup=False, highlight=False, soft_wrap=True)
            bar.update(task, completed=self.step, loss=f"reward {rec['reward/mean']:.3f}")
            self._after_step(bar, on_step)
        self._finish(bar)

    # -- evaluation, resume ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Greedy answers to the first ``data.max_eval_samples`` eval items, as ``perceive eval``
        decodes: exact match, hop rate and crop IoU (and each per ``card_size`` when items say)."""
        n = min(len(self.eval_ds), self.cfg.data.max_eval_samples)
        ranks = range(self.acc.process_index, n, self.acc.num_processes)
        prompts = [read_prompt(self.eval_ds, k, slot=k) for k in ranks]
        self.model.eval()
        trajs = roll(self.eval_loop, prompts, 1, 0, self.cfg.rollout.seed)
        rows = self._gathered([{"prompt": _light(p), "traj_done": t.finished}
                               for p, t in zip(prompts, trajs, strict=True)])
        rec = _eval_summary(rows)
        groups = sorted({r["prompt"].extra.get("card_size") for r in rows} - {None})
        for g in groups:
            rec[f"card_size/{g}"] = _eval_summary([r for r in rows if r["prompt"].extra.get("card_size") == g])
        return rec

    def _evaluate_and_report(self, bar) -> None:
        record = self.evaluate()
        self.history.append({"step": self.step, "eval": record})
        if self.acc.is_main_process:
            from perceive.train.eval_log import append_eval

            append_eval(self.cfg.output, self.step, record)
            if self.show_progress:
                line = (f"eval step {self.step}  exact match {record['exact_match']:.3f}  hop rate "
                        f"{record['hop_rate']:.3f}" + (f"  crop IoU {record['crop_iou']:.3f}"
                                                       if record.get("crop_iou") is not None else ""))
                bar.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def load(self, path: str | Path, allow_changes: bool = False) -> None:
        super().load(path, allow_changes)
        if self.acc.is_main_process:
            write_telemetry(self.cfg.output, [h["telemetry"] for h in self.history if "telemetry" in h])


def _light(p: Prompt) -> Prompt:
    """``p`` without its image: what telemetry reads, cheap to gather across processes."""
    return dataclasses.replace(p, image=None)


class _Done:
    """A finished rollout as :func:`rollout_metrics` reads it (its ``finished`` event)."""

    def __init__(self, finished):
        self.finished = finished


def _eval_summary(rows: list[dict]) -> dict:
    from perceive.eval.metrics import crop_iou, exact_match

    done = [(r["prompt"], r["traj_done"]) for r in rows]
    ious = [crop_iou(d.trace, p.box) for p, d in done]  # as perceive eval: items without a hop are unscored
    ious = [v for v in ious if v is not None]
    return {"exact_match": sum(exact_match(d.answer, p.answer) for p, d in done) / max(1, len(done)),
            "hop_rate": sum(bool(d.trace.hops) for _, d in done) / max(1, len(done)),
            "crop_iou": sum(ious) / len(ious) if ious else None, "samples": len(done)}


def train_grpo(cfg: GRPOConfig, resume=None, progress: bool = True, overwrite: bool = False,
               allow_changes: bool = False):
    """Run ``cfg`` to its end and save the model: ``(trainer, model folder)``."""
    from perceive.train.checkpoints import check_checkpoint, check_output
    from perceive.train.resume import resume_changes

    check_output(cfg.output, resume, overwrite)
    if resume:
        resume_changes(resume, check_checkpoint(resume), cfg, allow_changes)
    t = GRPOTrainer(cfg, progress=progress)
    t.train(resume, overwrite=overwrite, allow_changes=allow_changes)
    return t, t.save_model()


__all__ = ["GRPOTrainer", "failed_rollout", "train_grpo", "truncated"]
