"""GRPO training end to end on a tiny model: a run stopped and resumed ends with the weights of
one that was not; two processes (``accelerate launch``, CPU) make the same update as one; the
config, rewards and CLI refuse mistakes with a clear message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import perceive
from perceive.data.cards import generate
from perceive.errors import ConfigError
from perceive.rl.config import GRPOConfig
from perceive.rl.trainer import GRPOTrainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("cards"), 8, seed=7)


def raw_config(cards, **over) -> dict:
    cfg = {"method": "grpo", "model": {"tiny": {}}, "data": {"train": str(cards / "region.json")},
           "rollout": {"group_size": 4, "prompts_per_step": 2, "max_new_tokens": 10, "max_hops": 1, "seed": 3},
           # a random model's rollouts run out of tokens: kept in the loss, so that every step learns
           "loss": {"kl_coef": 0.05, "aggregation": "token_mean", "mask_truncated": False},
           "optim": {"steps": 4, "batch_size": 3, "lr": 1e-3}, "log_every": 0}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def config(cards, out, **over) -> GRPOConfig:
    return GRPOConfig.model_validate({**raw_config(cards, **over), "output": str(out)})


def test_resume_is_exact(cards, tmp_path):
    full = GRPOTrainer(config(cards, tmp_path / "full"), progress=False)
    full.train()
    part = GRPOTrainer(config(cards, tmp_path / "part", save_every=2), progress=False)
    part.train(until=2)  # interrupted after step 2
    resumed = GRPOTrainer(config(cards, tmp_path / "part"), progress=False)
    resumed.train(resume=tmp_path / "part" / "checkpoint-2")
    a = [h["telemetry"]["reward/mean"] for h in full.history if "telemetry" in h]
    b = [h["telemetry"]["reward/mean"] for h in resumed.history if "telemetry" in h]
    assert len(a) == len(b) == 4 and a == b
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), n
    lines = (tmp_path / "part" / "telemetry.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]  # no step listed twice


def test_a_step_changes_the_policy_and_reports_its_telemetry(cards, tmp_path):
    from perceive.rl import train_grpo
    from perceive.train.build import build_model

    cfg = config(cards, tmp_path / "run", optim={"steps": 2})
    torch.manual_seed(cfg.optim.seed)
    before = dict(build_model(cfg).named_parameters())  # the starting model, as the trainer builds it
    t, out = train_grpo(cfg, progress=False)
    assert (out / "perceive.json").exists()
    assert any(not torch.equal(before[n].detach(), p.detach()) for n, p in t.policy.named_parameters())
    rec = json.loads((tmp_path / "run" / "telemetry.jsonl").read_text().splitlines()[-1])
    for key in ("reward/mean", "reward/exact_match/mean", "reward/format/mean", "accuracy", "tool_use_rate",
                "hops_per_sample", "response_length", "entropy", "kl", "clip_fraction", "grad_norm",
                "rollout_samples_per_s", "update_samples_per_s", "truncated_fraction", "zero_advantage_fraction"):
        assert key in rec, key
    assert rec["step"] == 2 and rec["kl"] is not None and rec["rollout_samples_per_s"] > 0


@pytest.mark.slow
def test_two_processes_make_the_one_process_update(cards, tmp_path):
    """The documented command, `accelerate launch -m perceive train CONFIG`, on 1 and 2 CPU processes."""
    from safetensors.torch import load_file

    raw = raw_config(cards, rollout={"prompts_per_step": 4}, optim={"steps": 3, "batch_size": 4, "warmup_ratio": 0.0},
                     loss={"kl_coef": 0.0})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        if n == 1:  # one process: in this one (the same trainer `perceive train` runs)
            t = GRPOTrainer(GRPOConfig.model_validate({**raw, "output": str(out)}), progress=False)
            t.train()
            t.save_model()
        else:
            cfg = tmp_path / f"p{n}.yaml"
            cfg.write_text(json.dumps({**raw, "output": str(out)}))
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(n),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "perceive",
                   "train", str(cfg)]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-3000:]
        lines = [json.loads(x) for x in (out / "telemetry.jsonl").read_text().splitlines()]
        assert all(x["grad_norm"] > 0 and x["lr"] > 0 for x in lines)  # both steps learned something
        rewards = [x["reward/mean"] for x in lines]
        runs[n] = (load_file(out / "model" / "model.safetensors"), rewards)
    (w1, r1), (w2, r2) = runs[1], runs[2]
    assert len(r1) == 3 and r1 == pytest.approx(r2, abs=1e-6)  # the same rollouts, whichever process ran them
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4), k


def test_an_unknown_reward_names_the_installed_ones(cards, tmp_path):
    with pytest.raises(ConfigError, match=r"(?s)no reward named 'exact_mach'.*exact_match"):
        GRPOTrainer(config(cards, tmp_path / "x", rewards={"exact_mach": 1.0}), progress=False)


def test_adapter_disabled_reference_needs_lora(cards):
    with pytest.raises(ValueError, match="adapter_disabled needs lora"):
        config(cards, "out", loss={"kl_coef": 0.1, "reference": "adapter_disabled"})


def test_lora_policy_with_the_base_as_reference(cards, tmp_path):
    # a random model's rollouts run out of tokens: keep them in the loss, so there are tokens to measure KL on
    t = GRPOTrainer(config(cards, tmp_path / "lora", lora={"r": 4}, optim={"steps": 1},
                           loss={"mask_truncated": False}), progress=False)
    assert t.reference.value == "adapter_disabled"
    t.train()
    rec = t.history[-1]["telemetry"]
    assert rec["kl"] is not None and rec["kl"] >= 0 and rec["truncated_fraction"] > 0
    # only the adapters train: switched off, they give back the starting model, the KL reference
    assert {("lora_" in n) for n, p in t.policy.named_parameters() if p.requires_grad} == {True}


def test_the_adapters_off_are_no_reference_when_more_than_the_adapters_train(cards, tmp_path):
    with pytest.raises(ConfigError, match="adapter_disabled measures KL against the policy with its adapters off"):
        GRPOTrainer(config(cards, tmp_path / "x", lora={"r": 4}, trainable=["base.lm_head"]), progress=False)


def test_cli_trains_plots_and_refuses_a_bad_method(cards, tmp_path):
    from typer.testing import CliRunner

    from perceive.cli import app

    cfg = tmp_path / "grpo.yaml"
    raw = raw_config(cards, optim={"steps": 1})
    cfg.write_text(json.dumps({**raw, "output": str(tmp_path / "run")}))
    r = CliRunner().invoke(app, ["train", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "model written to" in r.output and (tmp_path / "run" / "model" / "perceive.json").exists()
    r = CliRunner().invoke(app, ["train", "plot", str(tmp_path / "run")])
    assert r.exit_code == 0 and (tmp_path / "run" / "curves.png").exists(), r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**raw, "method": "ppo"}))
    r = CliRunner().invoke(app, ["train", str(bad)])
    assert r.exit_code == 1, r.output
    assert "method: 'ppo' is not a training method" in r.output and "Traceback" not in r.output


def test_a_prompt_whose_image_cannot_be_read_is_skipped_and_reported(cards, tmp_path):
    import shutil

    data = tmp_path / "cards"
    shutil.copytree(cards, data)
    items = json.loads((data / "region.json").read_text())
    first = items[0]["images"][0].split("#")[0]
    (data / first).write_bytes(b"not an image")
    t = GRPOTrainer(config(data, tmp_path / "run", rollout={"prompts_per_step": 8}, optim={"steps": 1}),
                    progress=False)
    t.train()
    rec = t.history[-1]["telemetry"]
    assert rec["unreadable_prompts"] == 1 and 0 in t.unreadable
    assert len(t.step_prompts(0)) == 8  # its slot went to another item


class HangOnce:
    """A plugin whose first perception call hangs (until released): a rollout must not stall the step."""

    def __init__(self):
        import threading

        self.release, self.calls = threading.Event(), 0

    @perceive.hookimpl
    def perceive_before_action(self, context):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(60)


def test_a_hung_perception_call_fails_its_rollout_which_is_masked_and_reported(cards, tmp_path):
    from perceive.plugins import load_registry

    hang = HangOnce()
    models = ROOT / "models" / "default"
    try:
        cfg = config(cards, tmp_path / "run", model={"path": str(models)}, optim={"steps": 1, "lr": 1e-5},
                     rollout={"action_timeout_s": 0.5, "max_new_tokens": 16}, loss={"kl_coef": 0.0})
        t = GRPOTrainer(cfg, progress=False, registry=load_registry([("hang", hang)]))
        t.train()
    finally:
        hang.release.set()
    rec = t.history[-1]["telemetry"]
    assert rec["failed_fraction"] == pytest.approx(1 / 8)  # one of 2 prompts x 4 rollouts
    assert any("action_timeout" in w for w in rec["warnings"])


def test_a_step_whose_rollouts_were_all_masked_says_so(cards, tmp_path, monkeypatch):
    import perceive.rl.trainer as trainer

    monkeypatch.setattr(trainer, "truncated", lambda t: True)  # every rollout cut by a budget
    t = GRPOTrainer(config(cards, tmp_path / "run", optim={"steps": 1}, loss={"mask_truncated": True}),
                    progress=False)
    t.train()
    rec = t.history[-1]["telemetry"]
    assert rec["truncated_fraction"] == 1.0 and rec["zero_advantage_fraction"] == 1.0 and rec["grad_norm"] == 0
    assert any("every rollout was left out of the loss" in w for w in rec["warnings"])


def test_overwrite_clears_the_telemetry_of_the_earlier_run(cards, tmp_path):
    from perceive.train.checkpoints import run_files

    (tmp_path / "run").mkdir()
    for name in ("telemetry.jsonl", "curves.png", "notes.txt"):
        (tmp_path / "run" / name).write_text("x")
    assert {p.name for p in run_files(tmp_path / "run")} == {"telemetry.jsonl", "curves.png"}
