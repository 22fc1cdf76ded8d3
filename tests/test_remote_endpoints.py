"""Several endpoints share a remote run's load (``remote.url`` a list): against two live ``perceive
serve`` endpoints on 127.0.0.1 that count, server side, each sample's requests, every sample runs
all its turns on one endpoint, both are used, the answers equal a one-endpoint run's, and an
endpoint that dies fails only the samples on it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace as NS

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
IMAGES = sorted((ROOT / "models" / "default" / "examples").glob("card_*.png"))
QUESTIONS = ["What number is written on the card?", "Which number is on the card?"]
#: 8 samples: each image with each question (a sample is told apart by both)
ITEMS = [(p, q) for q in QUESTIONS for p in IMAGES]


def _sample_key(body: bytes) -> str | None:
    """A chat request's sample: a digest of its first user turn (the image and the question)."""
    try:
        messages = json.loads(body)["messages"]
    except (ValueError, KeyError, TypeError):
        return None
    first = next(m for m in messages if m["role"] == "user")
    return hashlib.sha1(json.dumps(first["content"], sort_keys=True).encode()).hexdigest()


def key_of(item: tuple[Path, str]) -> str:
    """The sample key the server computes for ``item``'s requests (the remote engine's first user turn)."""
    from perceive.images import load_image
    from perceive.remote import data_url

    content = [{"type": "image_url", "image_url": {"url": data_url(load_image(item[0]))}},
               {"type": "text", "text": item[1]}]
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _counting(app, hits: Counter):
    """``app`` (ASGI), counting each chat completion request by its sample in ``hits``."""

    async def counted(scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            return await app(scope, receive, send)
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg)
            more = msg.get("more_body", False)
        hits[_sample_key(b"".join(m.get("body", b"") for m in chunks))] += 1
        replay = iter(chunks)

        async def again():  # the body read above, then the connection's own messages (a disconnect)
            return next(replay, None) or await receive()

        return await app(scope, again, send)

    return counted


@contextlib.contextmanager
def counted_server(hits: Counter, model_name: str = "default"):
    """A live perceive serve of the shipped default model (its own copy), counting into ``hits``."""
    import perceive.serve

    create = perceive.serve.create_app
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(perceive.serve, "create_app", lambda *a, **kw: _counting(create(*a, **kw), hits))
        with live_server(PerceptionLoop(load_model(ROOT / "models" / "default")), model_name=model_name) as url:
            mp.undo()
            yield url


def same(t) -> tuple:
    """What a trace must share with another run's (timings and token counts aside)."""
    return ([(h.action, h.args, h.target, h.box, [v["id"] for v in h.views], h.node, h.error) for h in t.hops],
            t.answer, t.finish_reason, t.error)


def eval_answers(remote: RemoteLoop) -> dict[int, tuple]:
    """Every item through the eval's stream (``concurrency`` in flight): ``{position: (answer, ran)}``,
    each position exactly once."""
    from perceive.eval.stream import answers

    work = [(k, (lambda it=it: (it[0], it[1], None))) for k, it in enumerate(ITEMS)]
    got = list(answers(remote, work, cap=1))
    positions = [k for k, _, _ in got]
    assert sorted(positions) == list(range(len(ITEMS))), positions  # none lost, none twice
    return {k: (a, ran) for k, a, ran in got}


@pytest.fixture(scope="module")
def one_endpoint():
    """The reference: every item on one endpoint."""
    with counted_server(Counter()) as url:
        got = eval_answers(RemoteLoop(RemoteConfig(url=url, max_retries=0, concurrency=2)))
    return {k: a for k, (a, _) in got.items()}


def test_each_sample_runs_all_its_turns_on_one_endpoint(one_endpoint):
    a_hits, b_hits = Counter(), Counter()
    with counted_server(a_hits) as a, counted_server(b_hits) as b:
        remote = RemoteLoop(RemoteConfig(url=[a, b], max_retries=0, concurrency=2))
        got = eval_answers(remote)
    assert a_hits and b_hits, "one endpoint was never used"
    for k, (ans, ran) in got.items():
        assert ans.ok and ran, ans.error
        assert ans.text == one_endpoint[k].text and same(ans.trace) == same(one_endpoint[k].trace)
        # every request of the sample (one per turn: each hop, then the answer) went to its endpoint
        mine, other = (a_hits, b_hits) if ans.trace.endpoint == a else (b_hits, a_hits)
        key = key_of(ITEMS[k])
        assert (mine[key], other[key]) == (len(ans.trace.hops) + 1, 0), (k, ans.trace.endpoint, a_hits, b_hits)
    assert sum(a_hits.values()) + sum(b_hits.values()) == sum(len(a.trace.hops) + 1 for a, _ in got.values())


def test_a_dead_endpoint_fails_only_its_samples_and_gets_no_more(one_endpoint):
    hits = Counter()
    with counted_server(hits) as a:
        with counted_server(Counter()) as b:
            # b first: the first sample to start goes to it (no endpoint busy: ties go by order)
            remote = RemoteLoop(RemoteConfig(url=[b, a], max_retries=0, concurrency=2, timeout_s=10))
        # b has stopped: the run goes on without it
        got = eval_answers(remote)
    failed = {k: ans for k, (ans, _) in got.items() if not ans.ok}
    # that sample fails with the reason, b is out of the rotation, and every other sample runs on a
    # (while it was in flight, a had no more running than b)
    assert len(failed) == 1, failed
    (ans,) = failed.values()
    assert ans.trace.endpoint == b and ans.error["type"] == "RemoteError"
    assert f"cannot reach {b}" in ans.error["message"]
    assert len(hits) == len(ITEMS) - 1
    for k, (ans, _) in got.items():
        if k not in failed:
            assert ans.trace.endpoint == a and ans.text == one_endpoint[k].text
    assert remote.balancer.running == [0, 0] and not remote.endpoints[0].reachable  # every place given back


def test_the_cli_takes_several_remote_urls(tmp_path):
    from typer.testing import CliRunner

    from perceive.cli import app

    image, question = ITEMS[0]
    with counted_server(Counter()) as a, counted_server(Counter()) as b:
        for flags in (["--remote", a, "--remote", b], ["--remote", f"{a},{b}"]):
            r = CliRunner().invoke(app, ["ask", str(image), question, *flags, "--json"])
            assert r.exit_code == 0, r.output
            out = json.loads(r.output)
            assert out["trace"]["endpoint"] == a  # one sample: the first endpoint (none is busy)
        data = [{"messages": [{"role": "user", "content": f"<image>{q}"}, {"role": "assistant", "content": "0"}],
                 "images": [str(p)]} for p, q in ITEMS]
        (tmp_path / "data.json").write_text(json.dumps(data))
        r = CliRunner().invoke(app, ["eval", "--data", str(tmp_path / "data.json"), "--remote", f"{a},{b}",
                                     "--set", "remote.concurrency=2", "--out", str(tmp_path / "run")])
        assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == len(ITEMS) and {rec["trace"]["endpoint"] for rec in lines} == {a, b}


def test_an_endpoint_that_cannot_be_reached_refuses_the_run():
    with counted_server(Counter()) as a:
        dead = f"http://127.0.0.1:{free_port()}/v1"
        with pytest.raises(RemoteError, match=f"cannot reach {dead}"):
            RemoteLoop(RemoteConfig(url=[a, dead], max_retries=0, timeout_s=5))


class _Models:
    """An OpenAI-like client with only ``GET /models``: ``ids`` (each described by ``extra``)."""

    def __init__(self, *ids, extra=None):
        self.models = NS(list=lambda: NS(data=[NS(id=i, model_extra=extra or {}) for i in ids]))


def test_endpoints_serving_different_models_are_refused():
    urls = ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]
    with pytest.raises(RemoteError, match="127.0.0.1:10/v1 does not serve 'qwen'") as info:
        RemoteLoop(RemoteConfig(url=urls), client=[_Models("qwen"), _Models("other")])
    assert "every endpoint of remote.url must serve the same model" in info.value.hint
    with pytest.raises(RemoteError, match="does not serve 'other'") as info:
        RemoteLoop(RemoteConfig(url=urls, model="other"), client=[_Models("qwen", "other"), _Models("qwen")])
    assert "remote.model" in info.value.hint
    # one name, described differently (perceive serve of two models under one name)
    vpt = {"perceive": {"protocol": "vpt"}}
    with pytest.raises(RemoteError, match="describe 'm' differently"):
        RemoteLoop(RemoteConfig(url=urls), client=[_Models("m", extra=vpt),
                                                   _Models("m", extra={"perceive": {"protocol": "hermes_json"}})])


def test_remote_url_is_one_url_or_several():
    assert RemoteConfig(url="http://a:8000/v1").url == "http://a:8000/v1"  # one URL: as before
    assert RemoteConfig(url=["http://a:8000/v1"]).url == "http://a:8000/v1"
    both = ["http://a:8000/v1", "https://b:8000/v1"]
    assert RemoteConfig(url=both).urls == both
    assert RemoteConfig(url="http://a:8000/v1, https://b:8000/v1,").urls == both
    for bad, why in [("a:8000/v1", "is not an http(s) URL"), (["http://a/v1", "http://a/v1/"], "listed twice"),
                     ([], "no URL"), ("ftp://a/v1", "is not an http(s) URL")]:
        with pytest.raises(ValueError, match=re.escape(why)):
            RemoteConfig(url=bad)


def test_the_remote_flag_repeated_or_with_commas_is_a_list():
    from perceive.cli.run_config import remote_flags

    def url(flag):
        return remote_flags(flag, None)[0][1]

    assert url(None) is None and url(["http://a/v1"]) == "http://a/v1"
    assert url(["http://a/v1", "http://b/v1"]) == url(["http://a/v1,http://b/v1"]) == ["http://a/v1", "http://b/v1"]


def test_a_bad_remote_url_on_the_command_line_is_one_clear_line():
    from typer.testing import CliRunner

    from perceive.cli import app

    r = CliRunner().invoke(app, ["ask", str(IMAGES[0]), QUESTIONS[0], "--remote", "http://a/v1,http://a/v1"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "http://a/v1 is listed twice" in r.output
