"""``perceive serve`` as users start it: a process on 127.0.0.1. It prints the port it really
bound (``--port 0``), runs the model with the torch threads it was given, and drains on SIGTERM:
``/health`` answers 503 ``draining`` and new requests get 503 with ``Retry-After`` while the
requests in flight and queued finish, for at least the drain window; then it exits 0."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from perceive.serve.server import DrainingServer  # noqa: E402
from perceive.testing.live import user_message  # noqa: E402
from perceive.threads import choose_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "models" / "default" / "examples"
TRUTH = {k: v["number"] for k, v in json.loads((EXAMPLES / "examples.json").read_text()).items()}
QUESTION = "What number is written on the card?"
PERCEIVE = str(Path(sys.executable).parent / "perceive")
SERVING = re.compile(r"serving 'default' \(protocol vpt\) on http://127\.0\.0\.1:(\d+)/v1")


def call(method: str, port: int, path: str, body: dict | None = None) -> tuple[int, dict, bytes]:
    """A plain HTTP request to 127.0.0.1 (the standard library's client): ``(status, headers, body)``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def health(port: int) -> tuple[int, dict]:
    status, _, body = call("GET", port, "/health")
    return status, json.loads(body)


class Served:
    """``perceive serve --port 0 ARGS`` in a process of its own; its output is read as it comes
    (a full pipe would stall the server), and ``port`` is the one it printed."""

    def __init__(self, cwd: Path, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([PERCEIVE, "serve", "--model", str(ROOT / "models" / "default"), "--port", "0",
                                      "--model-name", "default", "--device", "cpu", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                     env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()
        t0 = time.monotonic()
        while not any(SERVING.search(line) for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() - t0 > 120:
                self.close()
                raise AssertionError(f"perceive serve did not start: {self.output}")
            time.sleep(0.1)
        self.port = int(next(SERVING.search(line) for line in self.lines if SERVING.search(line)).group(1))
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def health(self) -> tuple[int, dict]:
        return health(self.port)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.mark.slow
def test_port_0_prints_the_port_bound_and_the_model_thread_has_the_threads_chosen(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    served = Served(tmp_path, "--drain-window", "60", env=env)
    try:
        assert served.port != 0
        status, body = served.health()  # the printed port is the one listening
        assert status == 200 and body["status"] == "ok"
        default = choose_threads(None, env={})
        assert body["threads"] == default.threads  # the model thread's own count
        assert f"torch: {default.describe()}" in served.output
        # a second signal ends the drain window at once: nothing was in flight, so it exits 0
        served.proc.send_signal(signal.SIGTERM)
        assert _until(lambda: served.health()[0] == 503)
        t = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0 and time.monotonic() - t < 30, served.output
    finally:
        served.close()


@pytest.mark.slow
def test_sigterm_drains_health_says_so_new_requests_get_503_then_it_exits_0(tmp_path):
    served = Served(tmp_path, "--max-batch", "1", "--drain-window", "3", "--threads", "1")
    try:
        client = openai.OpenAI(base_url=f"{served.base}/v1", api_key="x", max_retries=0, timeout=120)
        assert served.health()[1]["threads"] == 1
        names = sorted(TRUTH) * 3  # one runs at a time (--max-batch 1): most are queued at SIGTERM
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
        # every request is in (running, queued or answered) before the signal
        in_server = {}
        assert _until(lambda: in_server.update(served.health()[1]) or
                      in_server["running"] + in_server["queued"] + len(answers) >= len(names)), in_server
        assert in_server["running"] + in_server["queued"] > 0  # work is left for the drain
        sent = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)

        status, body = served.health()  # the listener is still open: the health check says draining
        assert status == 503 and body["status"] == "draining"
        with pytest.raises(openai.APIStatusError) as refused:  # a new request goes elsewhere
            client.chat.completions.create(model="default", messages=[user_message(EXAMPLES / names[0], QUESTION)])
        assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"] == "1"
        assert refused.value.body["code"] == "draining"

        for t in threads:
            t.join(120)
        assert not errors, errors
        assert answers == {k: TRUTH[n] for k, n in enumerate(names)}  # none lost, every one right
        assert served.proc.wait(60) == 0, served.output
        assert time.monotonic() - sent >= 3  # the drain window held the listener open
        with pytest.raises(openai.APIConnectionError):  # and it is gone
            client.models.list()
        assert "drained and stopped" in served.output
    finally:
        served.close()


@pytest.mark.slow
def test_a_port_in_use_is_one_clear_line_before_the_model_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([PERCEIVE, "serve", "--port", str(port)], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)
    text = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in text, text
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in text
    assert "choose another --port (0: any free one)" in text


def _until(check, seconds: float = 60) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if check():
            return True
        time.sleep(0.05)
    return False


class FakeScheduler:
    """What the server asks the app's scheduler while draining."""

    running = queued = 0

    def __init__(self):
        self.draining, self.busy = False, False

    @property
    def idle(self) -> bool:
        return not self.busy

    def drain(self) -> None:
        self.draining = True


async def _ok(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def running_server():
    """A :class:`DrainingServer` on ``--port 0`` in a thread (signals are delivered by calling its
    handler): ``(server, scheduler, ports it reported)``."""
    servers = []

    def start(window: float):
        sched, ports = FakeScheduler(), []
        server = DrainingServer(uvicorn.Config(_ok, host="127.0.0.1", port=0, log_level="warning", lifespan="off"),
                                sched, drain_window_s=window, on_started=ports.append)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        assert _until(lambda: server.started, 30)
        servers.append((server, thread))
        return server, thread, sched, ports

    yield start
    for server, thread in servers:
        server.should_exit = server.force_exit = True
        thread.join(10)


def test_the_port_reported_is_the_one_bound(running_server):
    server, _, _, ports = running_server(0)
    assert ports == [server.port] and server.port != 0
    assert call("GET", server.port, "/")[2] == b"ok"


def test_sigterm_keeps_listening_for_the_window_and_until_the_work_is_done(running_server):
    server, thread, sched, _ = running_server(0.5)
    sched.busy = True
    server.handle_exit(signal.SIGTERM, None)
    assert sched.draining
    time.sleep(1.0)  # past the window, but a request is still running
    assert thread.is_alive() and call("GET", server.port, "/")[2] == b"ok"
    sched.busy = False
    thread.join(10)
    assert not thread.is_alive() and not server.forced


def test_ctrl_c_drains_without_the_window(running_server):
    server, thread, sched, _ = running_server(60)
    t = time.monotonic()
    server.handle_exit(signal.SIGINT, None)
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - t < 10 and sched.draining and not server.forced


def test_a_second_signal_stops_at_once_and_says_work_was_left(running_server):
    server, thread, sched, _ = running_server(60)
    sched.busy = True
    server.handle_exit(signal.SIGTERM, None)
    time.sleep(0.3)
    assert thread.is_alive()
    server.handle_exit(signal.SIGTERM, None)
    thread.join(10)
    assert not thread.is_alive() and server.forced


def test_a_draining_app_answers_health_and_chat_with_503_then_stops():
    """The real app in process: after SIGTERM, /health and a new chat request get 503 (a load
    balancer's cue), and the metrics count the refusal."""
    from perceive.loop import PerceptionLoop
    from perceive.model import load_model
    from perceive.serve import ServeSettings, create_app

    app = create_app(PerceptionLoop(load_model(ROOT / "models" / "default")), ServeSettings(model_name="default"))
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"),
                            app.state.scheduler, drain_window_s=1.0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert _until(lambda: server.started, 30)
        assert health(server.port) == (200, {"status": "ok", "running": 0, "queued": 0,
                                             "threads": app.state.scheduler.threads})
        server.handle_exit(signal.SIGTERM, None)
        assert health(server.port) == (503, {"status": "draining", "running": 0, "queued": 0,
                                             "threads": app.state.scheduler.threads})
        status, headers, body = call("POST", server.port, "/v1/chat/completions", {
            "model": "default", "messages": [user_message(EXAMPLES / "card_0.png", QUESTION)]})
        assert status == 503 and headers["retry-after"] == "1"
        error = json.loads(body)["error"]
        assert error["code"] == "draining" and "shutting down" in error["message"]
        metrics = call("GET", server.port, "/metrics")[2].decode()
        assert 'perceive_requests_total{status="rejected"} 1.0' in metrics
        thread.join(30)
        assert not thread.is_alive() and not server.forced
    finally:
        server.should_exit = server.force_exit = True
        thread.join(10)
