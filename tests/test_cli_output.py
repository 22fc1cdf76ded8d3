"""What the command line prints: help pages for every command, and ``plugins list`` at 80 columns."""

import json
import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from perceive.cli import app


def commands(cmd, path=()):
    yield path, cmd
    if hasattr(cmd, "commands"):  # a group (typer 0.2x vendors click: no isinstance checks)
        for name, sub in sorted(cmd.commands.items()):
            yield from commands(sub, (*path, name))


ALL = list(commands(typer.main.get_command(app)))


def test_the_command_tree_is_walked():
    names = {" ".join(p) for p, _ in ALL}
    assert {"", "ask", "plugins list", "plugins check", "graph show", "data cards", "eval", "train"} <= names


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=lambda p: " ".join(p) or "perceive")
def test_help_page_shows_no_type_beside_flags(path):
    """typer's rich help printed `<bool>` beside every flag (flags take no value)."""
    cmd = dict(ALL)[path]
    out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "<bool>" not in out.output and "BOOLEAN" not in out.output
    assert "--help" in out.output
    for p in cmd.params:  # every option is still listed; those that take a value keep their type
        if p.param_type_name == "option" and not getattr(p, "hidden", False):
            assert p.opts[0] in out.output
    if path == ("ask",):
        assert "<path>" in out.output and "--json" in out.output and "--reprefill" in out.output


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 50])
def test_plugins_list_never_breaks_token_names(columns):
    env = {**os.environ, "COLUMNS": str(columns)}
    run = [sys.executable, "-m", "perceive", "plugins", "list"]
    out = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True, env=env,
                                     timeout=120).stdout)
    words = {w.rstrip(",") for line in out.stdout.splitlines() for w in line.split()}
    for a in data["actions"]:
        inner = a["inner"] if len(a["inner"]) <= 2 else [a["inner"][0], a["inner"][-1]]
        for token in [a["start"], *inner, a["end"], a["name"], *a["encoders"]]:
            assert token in words, f"{token} is not printed whole at {columns} columns:\n{out.stdout}"
    if columns == 80:
        assert max(len(line) for line in out.stdout.splitlines()) <= 80
