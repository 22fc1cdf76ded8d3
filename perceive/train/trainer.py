"""The trainer: accelerate under the hood, so one config runs on CPU, one GPU or several.

Checkpoints every ``save_every`` steps hold the model, optimizer, scheduler and RNG states
(accelerate's ``save_state``) and the step; the data order is a seeded permutation per epoch,
so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from perceive.data.collate import Collator
from perceive.data.dataset import VPTDataset
from perceive.model.vpt import IGNORE_INDEX
from perceive.train.config import TrainConfig


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
        torch.manual_seed(cfg.optim.seed)
        self.model = model if model is not None else build_model(cfg)
        self.collate = Collator(self.model)
        self.train_ds = VPTDataset(cfg.data.train, policy=cfg.data.policy)
        self.eval_ds = VPTDataset(cfg.data.eval, policy=cfg.data.policy) if cfg.data.eval else None
        self.skipped = [str(i) for i in self.train_ds.issues]
        self._freeze()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.sched = self._scheduler()
        self.model, self.opt, self.sched = self.acc.prepare(self.model, self.opt, self.sched)
        self.step = 0
        self.history: list[dict] = []
        self.show_progress = progress

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
        for name, p in m.named_parameters():
            train = True
            if trainable is not None:
                train = any(name.startswith(t) for t in trainable)
            if any(name.startswith(f) for f in cfg.freeze):
                train = False
            if cfg.lora is not None and name.startswith("base.model.language_model") and "lora_" not in name:
                train = False
            p.requires_grad_(train)

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

    def train(self, resume: str | Path | None = None, until: int | None = None) -> list[dict]:
        """Train to ``optim.steps`` (or stop after step ``until``, as an interruption would)."""
        cfg = self.cfg
        last = min(cfg.optim.steps, until) if until is not None else cfg.optim.steps
        if resume:
            self.load(resume)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cols = [TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*cols, disable=not self.show_progress or not self.acc.is_main_process) as bar:
            task = bar.add_task("train", total=cfg.optim.steps, completed=self.step, loss="-")
            self.model.train()
            for step, micro in self.batches(self.step):
                if step >= last:
                    break
                t0 = time.perf_counter()
                total = 0.0
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
                bar.update(task, completed=self.step, loss=f"{total:.4f}")
                if cfg.log_every and self.step % cfg.log_every == 0:
                    self.write_log()  # headless runs can be watched through history.json
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.eval_ds is not None:
                    self.history.append({"step": self.step, "eval": self.evaluate()})
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save(cfg.output / f"checkpoint-{self.step}")
        if self.step == cfg.optim.steps and self.eval_ds is not None and not (
                cfg.eval_every and self.step % cfg.eval_every == 0):
            self.history.append({"step": self.step, "eval": self.evaluate()})
        self.write_log()
        return self.history

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
        path = Path(path)
        self.acc.save_state(str(path))
        (path / "trainer_state.json").write_text(json.dumps({"step": self.step, "history": self.history}))

    def load(self, path: str | Path) -> None:
        path = Path(path)
        self.acc.load_state(str(path))
        state = json.loads((path / "trainer_state.json").read_text())
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


def merge_lora(model) -> None:
    """Fold LoRA adapters into their base layers and put the plain layers back, so the saved base
    model is a standard transformers checkpoint."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module.get_base_layer())


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True):
    t = Trainer(cfg, progress=progress)
    t.train(resume)
    out = t.save_model()
    return t, out


__all__ = ["Trainer", "build_model", "merge_lora", "token_accuracy", "train"]
