"""The Python in docs/how-to/serve.md runs as written, against a live server of the shipped
model (the doc's port swapped for the test's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")

from perceive.loop import PerceptionLoop  # noqa: E402
from perceive.model import load_model  # noqa: E402
from perceive.testing.live import live_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_the_serve_how_to_runs_as_written(monkeypatch, capsys):
    doc = (ROOT / "docs" / "how-to" / "serve.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(ROOT)
    with live_server(PerceptionLoop(load_model(ROOT / "models" / "default")), model_name="default") as url:
        ns: dict = {}
        for code in blocks:
            exec(compile(code.replace("http://127.0.0.1:8000/v1", url), "serve.md", "exec"), ns)
    out = capsys.readouterr().out.split("\n")
    assert out[0] == "460" and out[2] == "460"  # server-side, then client-side tools
    assert "region_select" in out[1]
