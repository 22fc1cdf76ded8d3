"""The remote engine against a live ``perceive serve`` on 127.0.0.1, in both modes and with two
protocols (the VPT model, the hermes_json toolcall model): its traces equal the native run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from perceive.config import RemoteConfig  # noqa: E402
from perceive.errors import RemoteError  # noqa: E402
from perceive.loop import PerceptionLoop  # noqa: E402
from perceive.model import load_model  # noqa: E402
from perceive.remote import RemoteLoop  # noqa: E402
from perceive.testing.live import free_port, live_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What number is written on the card?"


def items(model: str) -> list[tuple[Path, str]]:
    folder = ROOT / "models" / model / "examples"
    return [(p, QUESTION) for p in sorted(folder.glob("card_*.png"))]


def same(t) -> tuple:
    """What a trace must share with the native run's (timings and token counts aside)."""
    return ([(h.action, h.args, h.target, h.box, [v["id"] for v in h.views], h.node, h.error) for h in t.hops],
            t.answer, t.finish_reason, t.error)


@pytest.fixture(scope="module", params=["default", "toolcall"])
def served(request):
    model = load_model(ROOT / "models" / request.param)
    loop = PerceptionLoop(model)
    native = loop.ask_batch(items(request.param))
    with live_server(loop, model_name=request.param) as url:
        yield request.param, url, native


@pytest.mark.parametrize("mode", ["client", "server"])
def test_remote_traces_equal_the_native_run(served, mode):
    name, url, native = served
    remote = RemoteLoop(RemoteConfig(url=url, mode=mode, max_retries=0))
    assert remote.protocol.name == ("vpt" if name == "default" else "hermes_json")  # told by the server
    got = remote.ask_batch(items(name))
    for n, g in zip(native, got, strict=True):
        assert g.ok, g.error
        assert same(g.trace) == same(n.trace)
        assert len(g.trace.hops) == 1 and g.trace.generated_tokens > 0


def test_cli_ask_and_eval_take_remote(served, tmp_path):
    from typer.testing import CliRunner

    from perceive.cli import app

    name, url, native = served
    image = items(name)[0][0]
    r = CliRunner().invoke(app, ["ask", str(image), QUESTION, "--remote", url, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["answer"] == native[0].text
    assert out["trace"]["hops"][0]["box"] == native[0].trace.hops[0].box
    data = [{"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                          {"role": "assistant", "content": "000"}], "images": [str(p)]} for p, _ in items(name)]
    (tmp_path / "data.json").write_text(json.dumps(data))
    # a served model needs no local one
    r = CliRunner().invoke(app, ["eval", "--data", str(tmp_path / "data.json"), "--remote", url,
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert [rec["prediction"] for rec in result["records"]] == [a.text for a in native]
    assert url in result["model"]


def test_a_busy_endpoint_is_retried_then_reported(tmp_path):
    model = load_model(ROOT / "models" / "default")
    with live_server(PerceptionLoop(model), model_name="default", max_queue=0) as url:
        remote = RemoteLoop(RemoteConfig(url=url, max_retries=1))
        answer = remote.ask(items("default")[0][0], QUESTION)
        assert answer.error["type"] == "RemoteError"
        assert "answered 429" in answer.error["message"]
        import http.client
        from urllib.parse import urlsplit

        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        rejected = [x for x in text.splitlines() if x.startswith('perceive_requests_total{status="rejected"}')]
        assert float(rejected[0].split()[-1]) == 2  # the first try and one retry


def test_an_endpoint_that_is_not_there_is_a_clear_error():
    with pytest.raises(RemoteError, match="cannot reach") as info:
        RemoteLoop(RemoteConfig(url=f"http://127.0.0.1:{free_port()}/v1", model="m", max_retries=0,
                                timeout_s=5), options=None)._first_model()
    assert "is the server running" in info.value.hint


def test_a_tool_parsers_structured_call_reads_as_the_text_call(registry):
    """vLLM with --tool-call-parser hermes hands the call back as tool_calls; written back as the
    family's text, it resolves to the same action and box as the raw text would."""
    from perceive.geometry import Frame

    proto = registry.protocol("hermes_json")
    actions = [a for a in registry.select(None) if a.grammar is not None]
    raw = '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 110, 90]}}\n</tool_call>'
    rebuilt = proto.call_text("image_zoom_in_tool", {"bbox_2d": [10, 20, 110, 90]})
    frames = [Frame.root(640, 480)]
    a, b = proto.calls_in_text(raw, frames, actions), proto.calls_in_text(rebuilt, frames, actions)
    assert [(e.action, e.args) for e in a] == [(e.action, e.args) for e in b]
    assert tuple(a[0].args.box) == (10, 20, 110, 90)
    # an endpoint that stopped on the closing tag: it is put back
    assert proto.close_call(raw.removesuffix("</tool_call>"), actions) == raw


def test_the_api_key_comes_from_the_environment_variable_the_config_names(monkeypatch):
    from perceive.errors import ConfigError
    from perceive.remote.endpoint import make_client as _client

    cfg = RemoteConfig(url="http://127.0.0.1:1/v1", api_key_env="PERCEIVE_TEST_KEY")
    monkeypatch.delenv("PERCEIVE_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="PERCEIVE_TEST_KEY"):
        _client(cfg)
    monkeypatch.setenv("PERCEIVE_TEST_KEY", "sk-test-123")
    client = _client(cfg)
    assert client.api_key == "sk-test-123" and client.max_retries == 3


def test_a_model_the_endpoint_does_not_serve_is_refused_at_once(served):
    name, url, _ = served
    with pytest.raises(RemoteError, match="does not serve 'nope'") as info:
        RemoteLoop(RemoteConfig(url=url, model="nope", max_retries=0))
    assert "remote.model" in info.value.hint



class _Endpoint:
    """An OpenAI-style chat endpoint (vLLM-like: it continues an assistant turn that ends in a call)
    whose model writes each of ``turns`` in order."""

    def __init__(self, turns):
        from types import SimpleNamespace as NS

        self.turns, self.NS = list(turns), NS
        self.models = NS(list=lambda: NS(data=[NS(id="m", model_extra={})]))
        self.chat = NS(completions=NS(create=self._create))

    def _create(self, **kw):
        NS = self.NS
        text = self.turns.pop(0)
        return NS(choices=[NS(message=NS(content=text, model_extra={}, tool_calls=None), finish_reason="stop")],
                  usage=NS(completion_tokens=len(text), prompt_tokens=10))


def test_an_unanswered_call_is_no_part_of_a_remote_answer():
    """--max-hops 0 on a hermes_json model behind an endpoint: its call goes unanswered (the event
    says why) and the answer is what it wrote after, as a local run's is."""
    from PIL import Image

    from perceive.loop import LoopOptions

    call = '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [8, 4, 48, 36]}}\n</tool_call>'
    remote = RemoteLoop(RemoteConfig(url="http://127.0.0.1:9/v1", max_retries=0), client=_Endpoint([call, "42"]),
                        options=LoopOptions(max_hops=0, protocol="hermes_json", protocol_options={"declare": False}))
    ans = remote.ask(Image.new("RGB", (64, 48)), QUESTION)
    assert ans.ok and ans.text == "42" and not ans.trace.hops, ans.trace
    (event,) = [e for e in ans.trace.events if e["type"] == "budget_exhausted"]
    assert "went unanswered: the hop budget is 0" in event["message"]
