import subprocess
import sys

import pytest


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


def test_version():
    out = subprocess.run([sys.executable, "-m", "perceive", "version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip()


def _run(*args, env_extra=None, cwd=None):
    import os

    env = {k: v for k, v in os.environ.items() if k != "PERCEIVE_DEBUG"}
    env.update({"COLUMNS": "200", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "perceive", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


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


def test_debug_shows_the_traceback_of_a_user_error_too(tmp_path):
    for args, env in ((["--debug", "data", "check", "x.json"], None), (["data", "check", "x.json"],
                                                                      {"PERCEIVE_DEBUG": "1"})):
        out = _run(*args, env_extra=env, cwd=tmp_path)
        assert out.returncode == 1
        assert "Traceback (most recent call last)" in out.stderr and "DatasetError: cannot read dataset x.json" in (
            out.stderr)


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
