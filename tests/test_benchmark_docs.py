"""docs/how-to/evaluate-on-benchmarks.md, "Try it offline first": its commands run as written, in
order, in a fresh folder (the perceive commands in this process; `python make_vstar.py` is the
page's Python block, saved under that name)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs/how-to/evaluate-on-benchmarks.md"


def blocks():
    """The section's fenced blocks, in order: (language, text)."""
    text = PAGE.read_text()
    section = text.split("## Try it offline first", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def perceive(args: list[str]):
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, " ".join(res.output.split())


@pytest.mark.slow
def test_the_offline_try_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(ROOT / "models")
    kinds = [lang for lang, _ in blocks()]
    assert kinds == ["bash", "python", "bash"]
    outputs = []
    for lang, text in blocks():
        if lang == "python":
            (tmp_path / "make_vstar.py").write_text(text)
            continue
        for line in text.splitlines():
            command = shlex.split(line.split("  #")[0])
            if command[0] == "python":
                done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=300,
                                      env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
                assert done.returncode == 0, done.stderr
                outputs.append((0, ""))
            else:
                assert command[0] == "perceive"
                outputs.append(perceive(command[1:]))
    codes = [c for c, _ in outputs]
    assert codes == [0, 0, 0, 0, 1, 0], outputs  # the first compare is refused: the shuffling differs
    assert "different protocols" in outputs[4][1] and "shuffle" in outputs[4][1]
    allowed = outputs[5][1]
    assert "| try-shuffled | free_choice | A |" in allowed and "| try-file-order | free_choice | B |" in allowed
    shuffled = json.loads((tmp_path / "runs/try-shuffled/eval.json").read_text())
    file_order = json.loads((tmp_path / "runs/try-file-order/eval.json").read_text())
    assert shuffled["protocol"]["shuffle"] == {"options": True, "seed": 0}
    assert file_order["protocol"]["shuffle"] == {"options": False, "seed": 0}
    assert len(shuffled["records"]) == 8 and shuffled["summary"]["figures"]["accuracy"]["n"] == 8
    # the file lists the right option first; shuffled, it is not always A
    assert {r["answer"] for r in file_order["records"]} == {"A"}
    assert len({r["answer"] for r in shuffled["records"]}) > 1
    assert sorted(shuffled["summary"]["categories"]) == ["direct_attributes", "relative_position"]
    assert len((tmp_path / "runs/try-shuffled/predictions.jsonl").read_text().splitlines()) == 8
