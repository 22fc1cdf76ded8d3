import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_reads_the_example_card_through_a_region_hop(tmp_path):
    from perceive.defaults import default_examples, default_model_path

    if default_model_path() is None:
        pytest.skip("models/default is not in this checkout")
    out = subprocess.run([sys.executable, "-m", "perceive", "demo", "--out", str(tmp_path), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    number = default_examples()[0][1]
    assert number in lines  # the answer, on its own line
    assert any("hop 1" in line and "region_select" in line for line in lines)
    assert (tmp_path / "trace.png").stat().st_size > 0


@pytest.mark.slow
def test_version():
    out = subprocess.run([sys.executable, "-m", "perceive", "version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip()


def _run(*args, env_extra=None, cwd=None):
    import os

    env = {k: v for k, v in os.environ.items() if k != "PERCEIVE_DEBUG"}
    env.update({"COLUMNS": "200", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "perceive", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


@pytest.mark.slow
def test_a_perceive_error_prints_error_and_hint_and_exits_1(tmp_path):
    out = _run("data", "check", str(tmp_path / "missing.json"))
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"error: cannot read dataset {tmp_path / 'missing.json'}: ")


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(monkeypatch):
    from typer.testing import CliRunner

    import perceive.data.mix
    from perceive.cli import app

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(perceive.data.mix, "mix", broken)
    res = CliRunner().invoke(app, ["data", "mix", "out.json", "a.json"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "internal error (a bug in perceive or a plugin): ZeroDivisionError: division by zero; rerun with "
        "`perceive --debug ...` or PERCEIVE_DEBUG=1 for the traceback"]
    res = CliRunner().invoke(app, ["--debug", "data", "mix", "out.json", "a.json"])
    assert isinstance(res.exception, ZeroDivisionError)  # raised on, for the traceback
    monkeypatch.setenv("PERCEIVE_DEBUG", "1")
    res = CliRunner().invoke(app, ["data", "mix", "out.json", "a.json"])
    assert isinstance(res.exception, ZeroDivisionError)


@pytest.mark.slow
def test_debug_shows_the_traceback_of_a_user_error_too(tmp_path):
    for args, env in ((["--debug", "data", "check", "x.json"], None), (["data", "check", "x.json"],
                                                                      {"PERCEIVE_DEBUG": "1"})):
        out = _run(*args, env_extra=env, cwd=tmp_path)
        assert out.returncode == 1
        assert "Traceback (most recent call last)" in out.stderr and "DatasetError: cannot read dataset x.json" in (
            out.stderr)


@pytest.mark.slow
def test_usage_errors_exit_2():
    out = _run("ask", "x.png", "What?", "--max-hops", "-1")
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr


def test_ask_with_an_empty_question_is_a_usage_error():
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, ["ask", "x.png", "  "])
    assert res.exit_code == 2
    assert res.output.startswith("error: the question is empty: pass it as the second argument, e.g. perceive ask "
                                 'x.png "What is written on the sign?"')


# -- one run config: --config, --set and flags on ask, graph run, eval and train -------------------

def cli(*args):
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})
    return res.exit_code, res.output


@pytest.fixture
def shipped(tmp_path):
    """A run config for the shipped model, written beside a base it extends, and its first example."""
    import textwrap

    from perceive.defaults import default_examples, default_model_path

    model = default_model_path()
    if model is None:
        pytest.skip("models/default is not in this checkout")
    (tmp_path / "base.yaml").write_text(f"model: {model}\ndevice: cpu\nruntime: {{max_new_tokens: 16}}\n")
    run = tmp_path / "run.yaml"
    run.write_text(textwrap.dedent("""
        extends: base.yaml
        graph: free_choice
        params: {max_hops: 2}
    """))
    image, number = default_examples()[0]
    return run, image, number


def test_ask_reads_the_model_and_the_settings_from_the_config(shipped):
    import json

    run, image, number = shipped
    code, out = cli("ask", "--config", run, image, "What number is written on the card?", "--json")
    assert code == 0, out
    got = json.loads(out)
    assert got["answer"] == number and [h["action"] for h in got["trace"]["hops"]] == ["region_select"]
    # flags over the config: --max-hops 0 beats its params.max_hops 2; --set over the file
    code, out = cli("ask", "--config", run, image, "What number?", "--json", "--max-hops", "0",
                    "--set", "runtime.max_new_tokens=3")
    got = json.loads(out)
    assert got["trace"]["hops"] == [] and got["trace"]["generated_tokens"] <= 3
    # --max-new-tokens (a flag) over --set
    code, out = cli("ask", "--config", run, image, "What number is written on the card?", "--json", "--set",
                    "runtime.max_new_tokens=3", "--max-new-tokens", "16", "--set", "max_hops=2")
    assert json.loads(out)["answer"] == number
    code, out = cli("ask", "--config", run, image, "Q", "--set", "runtime.max_hops=-1")
    assert code == 1 and "runtime.max_hops (--set runtime.max_hops): Input should be greater than or equal to 0" in out
    code, out = cli("ask", "--config", run, image, "Q", "--set", "max_hop=2")
    assert code == 2 and "error: --set max_hop: not a config field, nor a param of the graph free_choice" in out
    assert "did you mean 'max_hops'" in out
    code, out = cli("ask", "--config", run, image, "Q", "--set", "runtime.max_hops")
    assert code == 2 and "--set takes KEY=VALUE" in out
    (run.parent / "base.yaml").write_text("device: quantum\n")
    code, out = cli("ask", "--config", run, image, "Q")
    assert code == 1 and f"device ({run.parent / 'base.yaml'} line 1): 'quantum' is not a device" in out


def test_graph_run_takes_the_config_and_its_graph_argument_overrides_it(shipped):
    import json

    run, image, number = shipped
    code, out = cli("graph", "run", "--config", run, "--image", image, "--question",
                    "What number is written on the card?", "--json")
    assert code == 0, out
    got = json.loads(out)
    assert got["graph"] == "free_choice" and got["answer"] == number
    code, out = cli("graph", "run", "region_then_answer", "--config", run, "--image", image, "--question",
                    "What number?", "--json", "--set", "runtime.max_new_tokens=2")
    got = json.loads(out)
    assert got["graph"] == "region_then_answer" and got["trace"]["generated_tokens"] <= 2
    # a bare --set KEY is a graph param, as before: the budget of free_choice
    code, out = cli("graph", "run", "--config", run, "--image", image, "--question", "What number?", "--json",
                    "--set", "max_hops=0")
    assert json.loads(out)["trace"]["hops"] == []


def test_eval_takes_a_run_config_and_flags_override_it(shipped, tmp_path, monkeypatch):
    import json

    from perceive.data.cards import generate
    from perceive.errors import PerceiveError

    run, _, _ = shipped
    data = generate(tmp_path / "cards", 2, seed=1, split="eval", margin=0, prompts=False)
    code, out = cli("eval", "--config", run, "--data", data / "region.json", "--out", tmp_path / "out")
    assert code == 0, out
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert result["model"].endswith("models/default") and result["params"] == {"max_hops": 2}
    assert result["summary"]["samples"] == 2 and result["summary"]["samples_with_a_hop"] == 1.0
    seen = []

    def fake(cfg, **kw):
        seen.append(cfg)
        raise PerceiveError("stop here")

    monkeypatch.setattr("perceive.eval.runner.evaluate", fake)
    ev = tmp_path / "eval.yaml"
    ev.write_text(f"data: {data / 'region.json'}\nruntime: {{max_new_tokens: 5}}\nbatch_size: 2\n")
    cli("eval", ev, "--config", run, "--set", "runtime.max_new_tokens=6", "--set", "max_hops=1")
    cfg = seen[-1]  # CONFIG over --config, --set over both
    assert cfg.runtime.max_new_tokens == 6 and cfg.batch_size == 2 and cfg.graph_params() == {"max_hops": 1}
    cli("eval", ev, "--config", run, "--set", "runtime.max_new_tokens=6", "--max-new-tokens", "7", "--device", "cpu")
    assert seen[-1].runtime.max_new_tokens == 7  # the flag over --set
    code, out = cli("eval", ev, "--config", run, "--set", "batch_size=many")
    assert code == 1 and "batch_size (--set batch_size): Input should be a valid integer" in out


def test_train_takes_set_and_names_it_in_errors(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("model: {tiny: {}}\ndata: {train: missing.json}\noutput: runs/x\n")
    code, out = cli("train", cfg, "--set", "optim.lr=fast")
    assert code == 1 and "optim.lr (--set optim.lr): Input should be a valid number" in out
    code, out = cli("train", cfg, "--set", "optim")
    assert code == 2 and "--set takes KEY=VALUE" in out


def test_an_encoder_that_does_not_fit_its_branch_is_refused_with_config(tmp_path):
    from perceive.model import save_model
    from perceive.testing.tiny import tiny_vpt_model

    model = save_model(tiny_vpt_model(branches=("dino",)), tmp_path / "m")
    run = tmp_path / "run.yaml"
    run.write_text(f"model: {model}\nactions:\n  dino: {{encoder: dinov2_base}}\n")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64), "white").save(image)
    code, out = cli("ask", "--config", run, image, "What?")
    assert code == 1
    assert out.startswith(f"error: {run}: 1 problem(s)\n  actions.dino.encoder (line 3): 'dinov2_base' gives 768-wide "
                          "features but the model's dino projector takes 32")
    code, out = cli("config", "check", run)
    assert code == 1 and "actions.dino.encoder (line 3): 'dinov2_base' gives 768-wide features" in out
