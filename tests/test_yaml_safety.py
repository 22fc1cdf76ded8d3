"""Every YAML perceive reads goes through perceive.yamlio: hostile files are refused quickly and
cleanly (a ConfigError naming the file, the line and the limit), never a hang or a RecursionError."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perceive.errors import ConfigError

# 9 levels of 9 aliases: ~90 values written, 9**9 (387M) once expanded
BOMB_ANCHORS = "\n".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
)
EXPANDED = "the YAML holds more than 100000 values once its aliases (*name) are expanded"


def _cli(*args, timeout=60):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "perceive", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env={"COLUMNS": "400", "PATH": "",
                                               **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})
    return out, time.perf_counter() - t0


@pytest.mark.slow
def test_alias_bomb_graph_validate_refused_quickly(tmp_path):
    # graph params are substituted into every string of the graph: walking the bomb would hang
    p = tmp_path / "graph.yaml"
    p.write_text(BOMB_ANCHORS + "\nname: g\nstart: a\nparams: {x: *a8}\nnodes: {a: {kind: answer}}\n")
    out, took = _cli("graph", "validate", p)
    assert out.returncode == 1, out.stdout + out.stderr
    assert EXPANDED in out.stdout and f"{p}" in out.stdout and "[yaml]" in out.stdout
    assert took < 30


@pytest.mark.slow
def test_alias_bomb_config_check_refused_by_the_reader(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(BOMB_ANCHORS + "\n")
    out, took = _cli("config", "check", p)
    assert out.returncode == 1
    assert f"{p}: {EXPANDED}" in out.stdout and "invalid field" not in out.stdout
    assert took < 30


def test_alias_bomb_in_train_and_eval_configs(tmp_path):
    from perceive.eval.runner import load_eval_config
    from perceive.train.config import load_train_config

    p = tmp_path / "cfg.yaml"
    # an eval config's params go into the graph's ${...} placeholders: a walk over the bomb
    p.write_text(BOMB_ANCHORS + "\nmodel: m\ndata: d.json\nparams: {x: *a8}\n")
    for load in (load_eval_config, load_train_config):
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=r"more than 100000 values") as e:
            load(p)
        assert str(p) in str(e.value) and time.perf_counter() - t0 < 5


@pytest.mark.slow
def test_alias_bomb_in_a_set_value():
    value = "{" + ", ".join(BOMB_ANCHORS.splitlines()) + "}"
    out, took = _cli("graph", "validate", "free_choice", "--set", f"x={value}")
    assert out.returncode == 1 and f"error: --set x: {EXPANDED}" in out.stdout + out.stderr
    assert took < 30


@pytest.mark.slow
def test_100k_nested_brackets_are_a_clean_error(tmp_path):
    from perceive.config import load_config
    from perceive.eval.runner import load_eval_config
    from perceive.graph import check
    from perceive.train.config import load_train_config

    p = tmp_path / "deep.yaml"
    p.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    for load in (load_config, load_train_config, load_eval_config):
        with pytest.raises(ConfigError) as e:
            load(p)
        msg = str(e.value)
        assert f"{p}:1:65: YAML nested more than 64 levels deep" in msg and "flatten" in msg
    spec, issues = check(p)
    assert spec is None and [i.code for i in issues] == ["yaml"] and "nested more than 64" in issues[0].message
    out, _ = _cli("graph", "validate", p)
    assert out.returncode == 1 and "RecursionError" not in out.stdout + out.stderr and "64 levels" in out.stdout


def test_oversize_file_is_refused_before_parsing(tmp_path):
    from perceive.config import load_config
    from perceive.yamlio import MAX_BYTES

    p = tmp_path / "big.yaml"
    p.write_text("device: cpu\n" + "# padding\n" * (MAX_BYTES // 10 + 1))  # valid YAML, only too large
    with pytest.raises(ConfigError, match=rf"larger than the {MAX_BYTES}-byte limit") as e:
        load_config(p)
    assert str(p) in str(e.value) and "JSONL" in str(e.value)


def test_alias_count_limit_and_self_reference(tmp_path):
    from perceive.config import load_yaml

    p = tmp_path / "x.yaml"
    p.write_text("a: &a 1\nb: [" + ", ".join(["*a"] * 257) + "]\n")
    with pytest.raises(ConfigError, match=rf"{p}:2:\d+: more than 256 YAML aliases"):
        load_yaml(p)
    p.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=rf"{p}:1:\d+: a YAML alias refers to the collection that contains it"):
        load_yaml(p)
    # a few aliases and merge keys are fine
    p.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert load_yaml(p) == {"base": {"x": 1, "y": 2}, "other": {"x": 1, "y": 3}}


def test_malformed_yaml_names_file_and_line(tmp_path):
    from perceive.config import load_config

    p = tmp_path / "run.yaml"
    p.write_text("model:\n  path: m\nruntime: {max_hops: [1, 2}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:3:") and "not valid YAML" in msg and "fix the YAML syntax at line 3" in msg


def test_duplicate_keys_and_unreadable_values_are_refused(tmp_path):
    from perceive.config import load_yaml

    p = tmp_path / "x.yaml"
    for text, message in [
        ("device: cpu\ndtype: auto\ndevice: cuda\n",
         ":3:1: not valid YAML: .*duplicate key 'device' \\(first at line 1\\)"),
        ("n: " + "1" * 5000, r":1:\d+: not valid YAML: .*cannot read this value"),  # int(): a ValueError, no line
        ("a: !!python/object/apply:os.system [echo hi]\n", ":1:.*could not determine a constructor"),
    ]:
        p.write_text(text)
        with pytest.raises(ConfigError, match=str(p) + message):
            load_yaml(p)


@pytest.mark.slow
def test_the_reader_reads_every_shipped_yaml_as_before_and_refuses_a_bomb(tmp_path):
    import yaml

    from perceive.config import load_yaml

    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "*.yaml", "*.yml"], capture_output=True, text=True,
                           cwd=root).stdout.split()
    assert files
    for f in files:
        assert load_yaml(root / f) == yaml.safe_load((root / f).read_text()), f
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB_ANCHORS + "\n")
    with pytest.raises(ConfigError, match=re.escape(EXPANDED)):
        load_yaml(bomb)


def test_duplicate_keys_are_keys_equal_in_yaml_not_in_python(tmp_path):
    from perceive.config import load_yaml

    p = tmp_path / "x.yaml"
    # 1 and true, 1 and 1.0 are different YAML keys (an int, a bool, a float) that Python's dict
    # would fold into one: refused, but not as a "duplicate key True"
    for text, first, second in [("1: a\ntrue: b\n", "1", "true"), ("1: a\n1.0: b\n", "1", "1.0"),
                                ("0: a\nfalse: b\n", "0", "false")]:
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_yaml(p)
        msg = str(e.value)
        assert "duplicate key" not in msg, msg
        assert f"{p}:2:1: not valid YAML" in msg
        assert f"key {second!r} reads as the same key as {first!r} (line 1)" in msg
        assert "quote" in msg
    # genuinely equal keys are duplicates, whatever their spelling
    for text, key in [("1: a\n1: b\n", "1"), ("1: a\n0x1: b\n", "1"), ("true: a\nyes: b\n", "True"),
                      ("'x': a\nx: b\n", "'x'")]:
        p.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(f"duplicate key {key} (first at line 1)")):
            load_yaml(p)
    # keys Python tells apart are not duplicates
    p.write_text("1: a\n'1': b\nfalse: c\n'false': d\n")
    assert load_yaml(p) == {1: "a", "1": "b", False: "c", "false": "d"}
