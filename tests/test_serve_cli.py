"""``perceive serve`` as users start it: a process on 127.0.0.1. SIGTERM drains the requests in
flight (queued ones included), then the process exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from perceive.testing.live import free_port, user_message  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "models" / "default" / "examples"
TRUTH = {k: v["number"] for k, v in json.loads((EXAMPLES / "examples.json").read_text()).items()}
QUESTION = "What number is written on the card?"
PERCEIVE = str(Path(sys.executable).parent / "perceive")


def _wait_ready(client, proc, seconds=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if proc.poll() is not None:
            raise AssertionError(f"perceive serve exited: {proc.stdout.read()}")
        try:
            return client.models.list()
        except openai.APIConnectionError:
            time.sleep(0.2)
    raise AssertionError("perceive serve did not start")


@pytest.mark.slow
def test_sigterm_drains_the_requests_in_flight_then_exits(tmp_path):
    port = free_port()
    proc = subprocess.Popen([PERCEIVE, "serve", "--model", str(ROOT / "models" / "default"), "--port", str(port),
                             "--model-name", "default", "--max-batch", "1", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
        assert [m.id for m in _wait_ready(client, proc).data] == ["default"]
        names = sorted(TRUTH) * 2  # one runs at a time (--max-batch 1): most are queued at SIGTERM
        answers: dict[int, str] = {}
        errors: list[BaseException] = []

        def ask(k: int, name: str):
            try:
                r = client.chat.completions.create(model="default", messages=[user_message(EXAMPLES / name, QUESTION)])
                answers[k] = r.choices[0].message.content
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(k, n)) for k, n in enumerate(names)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # every request is in: running or queued
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert answers == {k: TRUTH[n] for k, n in enumerate(names)}  # none lost, every one right
        assert proc.wait(60) == 0
        with pytest.raises(openai.APIConnectionError):  # and it is gone
            client.models.list()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_a_bad_flag_without_a_traceback(tmp_path):
    r = subprocess.run([PERCEIVE, "serve", "--allow-local-images", str(tmp_path / "nope")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "not a folder" in r.stderr + r.stdout and "Traceback" not in r.stderr + r.stdout
