"""torch's intra-op thread count (``runtime.threads``, :mod:`perceive.threads`): chosen on purpose,
applied before the model runs, and reaching the thread that runs the model."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from perceive.config import RuntimeConfig, load_config
from perceive.config_files import Override
from perceive.errors import ConfigError
from perceive.threads import MAX_THREADS, ThreadSource, cgroup_cpu_limit, choose_threads, usable_cores

ROOT = Path(__file__).resolve().parents[1]
PERCEIVE = str(Path(sys.executable).parent / "perceive")


@pytest.fixture
def keep_torch_threads():
    """The test may change torch's thread count: give the rest of the session its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _in_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


@pytest.mark.parametrize(("usable", "threads"), [(1, 1), (2, 1), (4, 3), (64, 63)])
def test_the_default_leaves_one_usable_core_free(usable, threads):
    choice = choose_threads(None, env={}, usable=usable)
    assert (choice.threads, choice.source, choice.usable) == (threads, ThreadSource.DEFAULT, usable)


def test_runtime_threads_beats_omp_num_threads_which_beats_the_default():
    config = choose_threads(3, env={"OMP_NUM_THREADS": "5"}, usable=8)
    assert (config.threads, config.source) == (3, ThreadSource.CONFIG)
    env = choose_threads(None, env={"OMP_NUM_THREADS": "5"}, usable=8)
    assert (env.threads, env.source) == (5, ThreadSource.ENV)
    nested = choose_threads(None, env={"OMP_NUM_THREADS": "4,2"}, usable=8)  # OpenMP's nested levels
    assert (nested.threads, nested.source) == (4, ThreadSource.ENV)
    blank = choose_threads(None, env={"OMP_NUM_THREADS": " "}, usable=8)  # set but empty: not a choice
    assert (blank.threads, blank.source) == (7, ThreadSource.DEFAULT)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5", str(MAX_THREADS + 1)])
def test_a_bad_omp_num_threads_is_a_clear_error(value):
    with pytest.raises(ConfigError) as e:
        choose_threads(None, env={"OMP_NUM_THREADS": value}, usable=4)
    assert f"OMP_NUM_THREADS={value!r}" in e.value.message and "runtime.threads" in e.value.hint
    assert choose_threads(2, env={"OMP_NUM_THREADS": value}, usable=4).threads == 2  # not read when set


def test_the_choice_says_where_it_came_from():
    assert choose_threads(None, env={}, usable=2).describe() == \
        "1 intra-op thread (default: 2 usable cores, one left free)"
    assert choose_threads(None, env={}, usable=1).describe() == "1 intra-op thread (default: 1 usable core)"
    assert choose_threads(6, env={}, usable=2).describe() == "6 intra-op threads (runtime.threads)"
    assert choose_threads(None, env={"OMP_NUM_THREADS": "2"}, usable=8).describe() == \
        "2 intra-op threads (OMP_NUM_THREADS)"


@pytest.mark.parametrize(("v2", "v1", "cpus"), [
    ("200000 100000\n", None, 2), ("150000 100000\n", None, 2), ("50000 100000\n", None, 1),
    ("max 100000\n", None, None), (None, ("-1", "100000"), None), (None, ("300000", "100000"), 3), (None, None, None)])
def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path, v2, v1, cpus):
    v2_file, v1_dir = tmp_path / "cpu.max", tmp_path / "cpu"
    if v2 is not None:
        v2_file.write_text(v2)
    if v1 is not None:
        v1_dir.mkdir()
        (v1_dir / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (v1_dir / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    assert cgroup_cpu_limit(v2_file, v1_dir) == cpus


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_usable_cores_follow_the_cpu_affinity():
    """A process pinned to one core (``taskset -c 0``) counts one usable core and runs one thread."""
    code = ("from perceive.threads import choose_threads, usable_cores; "
            "print(usable_cores(), choose_threads(None, env={}).threads)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert out.stdout.split() == ["1", "1"], out.stderr
    assert usable_cores() <= len(os.sched_getaffinity(0))


def test_runtime_threads_is_checked_when_the_config_loads():
    assert RuntimeConfig.model_fields["threads"].default is None
    for bad in (0, -1, MAX_THREADS + 1, "many"):
        with pytest.raises(ConfigError, match=r"runtime\.threads \(--set runtime\.threads\)"):
            load_config(None, overrides=[Override(("runtime", "threads"), bad, "--set runtime.threads")])
    cfg = load_config(None, overrides=[Override(("runtime", "threads"), MAX_THREADS, "--set runtime.threads")])
    assert cfg.runtime.threads == MAX_THREADS


def test_the_cli_sets_torch_threads_before_the_model_thread_starts(keep_torch_threads, monkeypatch):
    """``run_config`` (ask, graph run, serve) gives torch the count, and a thread started after it,
    such as the server's model thread, runs with it."""
    from perceive.cli.run_config import run_config

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(3)
    run_config(None, ["runtime.threads=1"], [])
    assert torch.get_num_threads() == 1 and _in_new_thread(torch.get_num_threads) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    run_config(None, None, [])
    assert torch.get_num_threads() == 2 and _in_new_thread(torch.get_num_threads) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    run_config(None, None, [])
    assert torch.get_num_threads() == max(1, usable_cores() - 1)


@pytest.mark.slow
def test_a_bad_omp_num_threads_fails_the_cli_in_one_line(tmp_path):
    r = subprocess.run([PERCEIVE, "ask", str(ROOT / "models" / "default" / "examples" / "card_0.png"), "Q"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "OMP_NUM_THREADS": "lots"})
    text = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in text, text
    assert "error: OMP_NUM_THREADS='lots' is not a whole number of threads" in text


@pytest.mark.parametrize("argv", [
    ["ask", "IMG", "What number is written on the card?"],
    ["graph", "run", "free_choice", "--image", "IMG", "--question", "What number is written on the card?"],
    ["eval", "--model", "MODEL", "--data", "DATA"],
    ["serve", "--host", "203.0.113.1"],  # were the threads not set first, this fails at once, not serves
], ids=["ask", "graph-run", "eval", "serve"])
def test_every_command_that_runs_the_model_sets_the_threads_first(argv, monkeypatch, tmp_path):
    """Each command hands ``runtime.threads`` to :func:`set_torch_threads` before its model loads
    (the stand-in stops the command there)."""
    from typer.testing import CliRunner

    import perceive.threads
    from perceive.cli import app

    seen = []

    def stand_in(requested, env=None):
        seen.append(requested)
        raise ConfigError("stopped where the threads are set")

    monkeypatch.setattr(perceive.threads, "set_torch_threads", stand_in)
    (tmp_path / "data.json").write_text("[]")
    model = ROOT / "models" / "default"
    paths = {"IMG": str(model / "examples" / "card_0.png"), "MODEL": str(model), "DATA": str(tmp_path / "data.json")}
    r = CliRunner().invoke(app, [paths.get(a, a) for a in argv] + ["--set", "runtime.threads=3"])
    assert seen == [3], r.output
    assert r.exit_code == 1 and "stopped where the threads are set" in r.output
