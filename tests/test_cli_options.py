"""The options several commands share are declared once (perceive.cli.options): every command
that runs the loop takes each with the same type, bounds and help, and refuses the same bad
values before it loads anything."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from perceive.cli import app
from perceive.cli.options import SHARED

LOOP_COMMANDS = {"ask": ["ask", "x.png", "q"], "graph run": ["graph", "run", "--image", "x.png", "--question", "q"],
                 "eval": ["eval"], "serve": ["serve"]}


def _params(path: list[str]) -> dict:
    """The click options of the command at ``path`` (``["graph", "run"]``), by their flag."""
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {opt: p for p in cmd.params for opt in p.opts}


def _shape(p) -> tuple:
    """What makes two declarations of a flag the same: its value type, bounds, help and metavar."""
    return (str(p.bare_type), p.min, p.max, p.help, p.metavar, p.multiple, p.is_flag)


def test_every_loop_command_takes_the_shared_options_alike():
    reference = {}
    for command in LOOP_COMMANDS:
        for flag, p in _params(command.split()).items():
            if flag in SHARED:
                reference.setdefault(flag, {})[command] = _shape(p)
    differ = {flag: shapes for flag, shapes in reference.items() if len(set(shapes.values())) > 1}
    assert not differ, f"a shared option is declared differently by these commands: {differ}"
    # the flags each loop command must have (ask/graph run/eval/serve all run the loop)
    for command in LOOP_COMMANDS:
        have = set(_params(command.split()))
        missing = {"--config", "--model", "--set", "--max-new-tokens", "--device", "--dtype", "--action-timeout",
                   "--threads"} - have
        assert not missing, f"perceive {command} lacks {missing}"


def test_the_bounds_hold_on_every_command():
    """eval's --action-timeout had lost its bounds: each command now refuses 0 as a usage error."""
    runner = CliRunner()
    for command, argv in LOOP_COMMANDS.items():
        for bad in (["--action-timeout", "0"], ["--threads", "0"], ["--max-new-tokens", "0"]):
            result = runner.invoke(app, [*argv, *bad])
            assert result.exit_code == 2, (command, bad, result.output)
            assert f"Invalid value for '{bad[0]}'" in result.output, (command, bad, result.output)


def test_eval_takes_batch_size_and_threads(tmp_path):
    from perceive.cli.run_config import cli_overrides
    from perceive.eval.runner import EvalConfig

    p = _params(["eval"])
    assert p["--batch-size"].min == 1
    overrides = cli_overrides(["batch_size=3"], [(("batch_size",), 5, "--batch-size"),
                                                 (("runtime", "threads"), 1, "--threads")], EvalConfig.model_fields)
    assert [(o.path, o.value) for o in overrides][-2:] == [(("batch_size",), 5), (("runtime", "threads"), 1)]


def test_eval_batch_size_sets_runtime_max_batch_size_over_the_file(tmp_path, monkeypatch):
    """--batch-size is runtime.max_batch_size, not the deprecated eval batch_size: it beats the
    file's setting (either spelling) and warns of nothing."""
    import warnings

    from perceive.errors import PerceiveError

    seen = []

    def fake(cfg, **kw):
        seen.append(cfg)
        raise PerceiveError("stop here")

    monkeypatch.setattr("perceive.eval.runner.evaluate", fake)
    ev = tmp_path / "eval.yaml"
    for setting in ("runtime: {max_batch_size: 4}", "batch_size: 4"):
        ev.write_text(f"model: m\ndata: d.json\n{setting}\n")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            CliRunner().invoke(app, ["eval", str(ev), "--batch-size", "2"])
        assert seen[-1].runtime.max_batch_size == 2 and seen[-1].batch_size == 2, setting
        moved = [w for w in caught if "batch_size is deprecated" in str(w.message)]
        assert len(moved) == (setting == "batch_size: 4"), (setting, [str(w.message) for w in caught])
    ev.write_text("model: m\ndata: d.json\n")
    CliRunner().invoke(app, ["eval", str(ev), "--batch-size", "3"])
    assert seen[-1].runtime.max_batch_size == 3
    assert seen[-1]._data["runtime"].origins["max_batch_size"] == "--batch-size"
    # a flag beats --set, whichever spelling the --set uses
    for spelling in ("batch_size", "runtime.max_batch_size"):
        CliRunner().invoke(app, ["eval", str(ev), "--set", f"{spelling}=7", "--batch-size", "2"])
        assert seen[-1].runtime.max_batch_size == 2, spelling
