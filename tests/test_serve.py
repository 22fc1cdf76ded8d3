"""``perceive serve`` over real HTTP on 127.0.0.1, called with the official ``openai`` client: the
answers equal offline ``ask``, streamed events come in order, client-side tools run end to end, bad
requests get OpenAI-style 4xx errors, and a client that goes away does not disturb another."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from perceive.loop import LoopOptions, PerceptionLoop  # noqa: E402
from perceive.model import load_model  # noqa: E402
from perceive.testing.live import data_url, live_server, user_message  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "models" / "default" / "examples"
QUESTION = "What number is written on the card?"
TRUTH = {k: v["number"] for k, v in json.loads((EXAMPLES / "examples.json").read_text()).items()}


def request(method: str, url: str, body: dict | None = None) -> tuple[int, dict, bytes]:
    """A plain HTTP request (the standard library's client): ``(status, headers, body)``."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, u.path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def user(image, question=QUESTION) -> dict:
    return user_message(image, question)


@pytest.fixture(scope="module")
def model():
    return load_model(ROOT / "models" / "default")


@pytest.fixture(scope="module")
def offline(model):
    loop = PerceptionLoop(model)
    return {name: loop.ask(EXAMPLES / name, QUESTION) for name in sorted(TRUTH)}


@pytest.fixture(scope="module")
def server(model):
    with live_server(PerceptionLoop(model), model_name="default", max_batch=4) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=60)


def test_answers_and_traces_equal_offline_ask(client, offline):
    for name, want in offline.items():
        r = client.chat.completions.create(model="default", messages=[user(EXAMPLES / name)])
        choice = r.choices[0]
        assert choice.message.content == want.text == TRUTH[name]
        assert choice.finish_reason == "stop"
        trace = r.model_extra["perceive"]["trace"]
        assert [(h["action"], h["box"]) for h in trace["hops"]] == [(h.action, h.box) for h in want.trace.hops]
        assert trace["finish_reason"] == "eos"
        assert r.usage.completion_tokens == want.trace.generated_tokens
        assert r.usage.prompt_tokens == want.trace.prompt_tokens + sum(h.prefilled_tokens for h in want.trace.hops)


def test_a_requests_temperature_is_not_used_and_the_warning_says_how_the_server_decodes(client, model):
    r = client.chat.completions.create(model="default", messages=[user(EXAMPLES / "card_0.png")], temperature=0.7)
    assert r.choices[0].message.content == TRUTH["card_0.png"]
    assert any("decodes greedily" in w for w in r.model_extra["perceive"]["warnings"])
    # a server whose run config samples says so (found by a new-user trial: the warning said greedy)
    sampling = PerceptionLoop(model, options=LoopOptions(do_sample=True, temperature=0.5, seed=2))
    with live_server(sampling, model_name="default", max_batch=1) as url:
        r = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60).chat.completions.create(
            model="default", messages=[user(EXAMPLES / "card_0.png")], temperature=0.7, max_tokens=8)
    (warning,) = [w for w in r.model_extra["perceive"]["warnings"] if "temperature/top_p" in w]
    assert "samples with its run config's sampling (temperature 0.5" in warning


def test_models_health_and_metrics(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["default"]
    info = models.data[0].model_extra["perceive"]
    assert info["protocol"] == "vpt" and "region_select" in info["tools"]
    assert info["action_options"]["region_select"] == {"margin": 0}  # the model's trained options
    base = server.removesuffix("/v1")
    assert json.loads(request("GET", f"{base}/health")[2])["status"] == "ok"
    client.chat.completions.create(model="default", messages=[user(EXAMPLES / "card_0.png")])
    text = request("GET", f"{base}/metrics")[2].decode()
    ok = [line for line in text.splitlines() if line.startswith('perceive_requests_total{status="ok"}')]
    assert ok and float(ok[0].split()[-1]) >= 1
    assert 'perceive_hops_total{action="region_select"}' in text
    assert "perceive_request_seconds_bucket" in text and "perceive_queue_depth" in text


def test_streamed_events_come_in_order(client, offline):
    want = offline["card_1.png"]
    stream = client.chat.completions.create(model="default", messages=[user(EXAMPLES / "card_1.png")], stream=True)
    kinds, content, usage, final = [], "", None, None
    for chunk in stream:
        ext = (chunk.model_extra or {}).get("perceive") or {}
        if ext.get("event") == "hop":
            kinds.append("hop")
            assert ext["hop"]["box"] == want.trace.hops[0].box and ext["hop"]["action"] == "region_select"
        elif chunk.usage is not None:
            kinds.append("usage")
            usage, final = chunk.usage, ext
        elif chunk.choices and chunk.choices[0].finish_reason:
            kinds.append("finish")
            assert chunk.choices[0].finish_reason == "stop"
        elif chunk.choices and chunk.choices[0].delta.role:
            kinds.append("role")
        elif chunk.choices and chunk.choices[0].delta.content:
            kinds.append("content")
            content += chunk.choices[0].delta.content
    # role first; the hop before any answer text; then the finish, then the usage, last
    assert kinds[0] == "role" and kinds[1] == "hop"
    assert kinds[-2:] == ["finish", "usage"]
    assert set(kinds[2:-2]) == {"content"}
    assert content == want.text
    assert usage.completion_tokens == want.trace.generated_tokens
    assert final["trace"]["answer"] == want.text


def _crop(image: Image.Image, box: dict) -> Image.Image:
    return image.crop((box["x0"], box["y0"], box["x1"], box["y1"]))


def test_client_side_tools_end_to_end(client, offline):
    """The server hands the call back; the client crops and returns the image, in OpenAI's shape
    (a tool message) and in the shape every engine accepts (a user turn with the image)."""
    for name in ("card_0.png", "card_3.png"):
        want = offline[name]
        image = Image.open(EXAMPLES / name).convert("RGB")
        messages = [user(EXAMPLES / name)]
        tools = [{"type": "function", "function": {"name": "region_select"}}]
        r = client.chat.completions.create(model="default", messages=messages, tools=tools)
        assert r.choices[0].finish_reason == "tool_calls"
        msg = r.choices[0].message
        (call,) = msg.tool_calls
        assert call.function.name == "region_select"
        ext = call.model_extra["perceive"]
        assert ext["boxes"] == [want.trace.hops[0].box]  # what to crop, in root pixels
        crop = _crop(image, ext["boxes"][0])
        openai_shape = [*messages, msg.model_dump(exclude_none=True),
                        {"role": "tool", "tool_call_id": call.id,
                         "content": [{"type": "image_url", "image_url": {"url": data_url(crop)}}]}]
        raw = msg.model_extra["perceive"]["text"]
        engine_shape = [*messages, {"role": "assistant", "content": raw},
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(crop)}}]}]
        for conversation in (openai_shape, engine_shape):
            done = client.chat.completions.create(model="default", messages=conversation, tools=tools)
            assert done.choices[0].finish_reason == "stop"
            assert done.choices[0].message.content == want.text == TRUTH[name]
            hops = done.model_extra["perceive"]["trace"]["hops"]
            assert [h["box"] for h in hops] == [want.trace.hops[0].box]


def _err(info) -> dict:
    """The error object of an openai APIStatusError (the client unwraps ``error`` itself)."""
    body = info.value.body
    return body["error"] if isinstance(body, dict) and "error" in body else body


def _create(client, **kw):
    body = {"model": "default", "messages": [user(EXAMPLES / "card_0.png")], **kw}
    return client.chat.completions.create(**body)


@pytest.mark.parametrize("kw,status,words", [
    ({"model": "gpt-9"}, 404, "does not exist"),
    ({"extra_body": {"temperature_scale": 2}}, 400, "unknown field 'temperature_scale'"),
    ({"tools": [{"type": "function", "function": {"name": "rm_rf"}}]}, 400, "no tool named 'rm_rf'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                     "aGVsbG8="}},
                                                {"type": "text", "text": "hi"}]}]}, 400, "corrupt or not an image"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                     "%%%"}},
                                                {"type": "text", "text": "hi"}]}]}, 400, "not valid base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "https://example.com/a.png"}},
                                                {"type": "text", "text": "hi"}]}]}, 400, "never fetches"),
    ({"messages": [{"role": "user", "content": "no image here"}]}, 400, "exactly one image"),
    # input images the model cannot look at: what the client should send instead
    ({"messages": [user(Image.new("RGB", (1, 1)))]}, 400, "1x1 px: too small to look at; each side needs"),
    ({"messages": [user(Image.new("RGB", (20000, 50)))]}, 400, "20000x50 px: its aspect ratio of 400:1 is over"),
    ({"messages": [user(EXAMPLES / "card_0.png", "why? " * 20000)]}, 400, "max_position_embeddings"),
    ({"extra_body": {"perceive": {"graph": "no_such_graph"}}}, 400, "no_such_graph"),
    ({"extra_body": {"perceive": {"actions": {"region_select": {"margin": "lots"}}}}}, 400, "margin"),
    # a tool another plugin installs, but this model has no tokens for
    ({"tools": [{"type": "function", "function": {"name": "dino"}}]}, 400, "no tool named 'dino'"),
    ({"logprobs": True}, 400, "logprobs: not supported"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format: not supported"),
])
def test_bad_requests_get_openai_errors(client, kw, status, words):
    with pytest.raises(openai.APIStatusError) as info:
        _create(client, **kw)
    assert info.value.status_code == status
    err = _err(info)
    assert words in err["message"]
    assert "Traceback" not in err["message"]


def test_zero_hops_answers_without_looking_and_the_trace_says_which_call_went_unanswered(client):
    """The serve twin of `ask --max-hops 0`: not an error; the model's call goes unanswered."""
    r = _create(client, extra_body={"perceive": {"max_hops": 0}})
    ext = r.model_extra["perceive"]
    assert r.choices[0].finish_reason == "stop" and not ext["trace"]["hops"]
    (event,) = [e for e in ext["trace"]["events"] if e["type"] == "budget_exhausted"]
    assert "the model's 'region_select' call" in event["message"] and "the hop budget is 0" in event["message"]
    assert "region_token" not in (r.choices[0].message.content or "")


@pytest.mark.parametrize("kw,code", [
    ({"messages": [user(Image.new("RGB", (1, 1)))]}, "image-unreadable"),
    ({"messages": [user(EXAMPLES / "card_0.png", "why? " * 20000)]}, "input-invalid"),
    ({"extra_body": {"perceive": {"actions": {"region_select": {"margin": "lots"}}}}}, "config-invalid"),
])
def test_a_perceive_error_comes_with_its_documented_code(client, kw, code):
    """The error JSON's ``code`` is the ErrorCode value docs/reference/errors.md lists (not the class name)."""
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, **kw)
    assert _err(info)["code"] == code, _err(info)


def test_a_body_over_the_limit_gets_413(model):
    with live_server(PerceptionLoop(model), model_name="default", max_body_bytes=2048) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model="default", messages=[user(EXAMPLES / "card_0.png")])
        assert info.value.status_code == 413
        assert "over the server's limit" in _err(info)["message"]


def test_a_full_queue_answers_429_with_retry_after(model):
    with live_server(PerceptionLoop(model), model_name="default", max_queue=0) as url:
        status, headers, body = request("POST", f"{url}/chat/completions",
                                     {"model": "default", "messages": [user(EXAMPLES / "card_0.png")]})
        assert status == 429
        assert int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"]["code"] == "queue_full"


def test_a_passed_deadline_is_a_504_and_the_server_serves_on(client):
    with pytest.raises(openai.APIStatusError) as info:
        _create(client, extra_body={"perceive": {"deadline_s": 0.0001}})
    assert info.value.status_code == 504 and _err(info)["code"] == "deadline_exceeded"
    assert _create(client).choices[0].message.content == TRUTH["card_0.png"]


def test_a_client_that_disconnects_does_not_disturb_a_concurrent_one():
    """A random-weight tiny model generates until its token budget, so a sample runs long enough
    to be walked away from: one client streams and leaves after the first event; another, in the
    same running batch, gets exactly its offline answer; the server counts the cancelled one."""
    from perceive.loop import LoopOptions
    from perceive.testing.images import real_photos
    from perceive.testing.tiny import tiny_vpt_model

    tiny = tiny_vpt_model()
    photos = list(real_photos().values())
    opts = LoopOptions(max_new_tokens=120, dispatch=False)
    stop = sorted(set(tiny.config.special.eos) | {tiny.config.special.im_end})

    def never_stop(index, generated, logits):  # greedy, the end of turn masked out
        masked = logits.clone()
        masked[stop] = float("-inf")
        return int(masked.argmax())

    want = PerceptionLoop(tiny, options=opts, policy=never_stop).ask(photos[1], "What is it?")
    assert want.trace.finish_reason.value == "max_new_tokens"  # it runs to the budget
    results = {}
    with live_server(PerceptionLoop(tiny, options=opts, policy=never_stop), model_name="tiny", max_batch=4) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
        base = url.removesuffix("/v1")

        def cancelled() -> float:
            text = request("GET", f"{base}/metrics")[2].decode()
            line = [x for x in text.splitlines() if x.startswith('perceive_requests_total{status="cancelled"}')]
            return float(line[0].split()[-1]) if line else 0.0

        def steady():
            results["steady"] = c.chat.completions.create(model="tiny", messages=[user(photos[1], "What is it?")])

        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        body = {"model": "tiny", "messages": [user(photos[0], "What is it?")], "stream": True}
        conn.request("POST", f"{u.path}/chat/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        t = threading.Thread(target=steady)
        t.start()
        assert resp.readline().startswith(b"data:")  # the stream began
        conn.close()  # walk away mid-generation
        t.join(120)
        assert results["steady"].choices[0].message.content == want.text
        assert results["steady"].usage.completion_tokens == want.trace.generated_tokens
        for _ in range(200):  # the cancel lands at the server's next step
            if cancelled() >= 1:
                break
            threading.Event().wait(0.05)
        assert cancelled() == 1


def test_no_request_body_gets_a_500(server):
    """Whatever JSON a client posts (random values in every field of a real request, or any JSON
    at all), the answer is a 200 or an OpenAI-style 4xx error, never a 500 or a dropped
    connection."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = {"model": "default", "messages": [user(EXAMPLES / "card_3.png")], "max_tokens": 16}
    leaf = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=20)
    value = st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                          max_size=3), max_leaves=8)
    fields = ["model", "messages", "stream", "max_tokens", "tools", "tool_choice", "temperature", "n", "perceive",
              "skip_special_tokens", "continue_final_message", "stop"]
    mutated = st.builds(lambda k, v: {**good, k: v}, st.sampled_from(fields), value)
    nested = st.builds(lambda v: {**good, "messages": [{"role": "user", "content": v}]}, value)
    perceive_opts = st.builds(lambda v: {**good, "perceive": v}, st.dictionaries(
        st.sampled_from(["graph", "params", "max_hops", "actions", "deadline_s", "trace"]), value, max_size=3))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(value, mutated, nested, perceive_opts))
    def check(body):
        status, _, raw = request("POST", f"{server}/chat/completions", body)
        assert status == 200 or 400 <= status < 500, (status, raw[:300], body)
        if status != 200:
            err = json.loads(raw)["error"]
            assert err["message"] and "Traceback" not in err["message"]

    check()


def test_local_image_paths_only_under_the_allowed_folder(model, tmp_path):
    outside = tmp_path / "card.png"
    outside.write_bytes((EXAMPLES / "card_0.png").read_bytes())
    with live_server(PerceptionLoop(model), model_name="default", allow_local_images=EXAMPLES) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0)

        def ask(path):
            return c.chat.completions.create(model="default", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": str(path)}}, {"type": "text", "text": QUESTION}]}])

        assert ask(EXAMPLES / "card_0.png").choices[0].message.content == TRUTH["card_0.png"]
        assert ask(f"file://{EXAMPLES / 'card_1.png'}").choices[0].message.content == TRUTH["card_1.png"]
        for bad in (outside, EXAMPLES / ".." / ".." / "toolcall" / "examples" / "card_0.png"):
            with pytest.raises(openai.BadRequestError, match="not under the allowed image folder"):
                ask(bad)
    with live_server(PerceptionLoop(model), model_name="default") as url:  # off by default
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="local image paths are off"):
            c.chat.completions.create(model="default", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": str(EXAMPLES / "card_0.png")}},
                {"type": "text", "text": QUESTION}]}])


def test_conversations_that_cannot_be_replayed_get_a_400_that_says_why(client, server):
    """And each is counted once, as the client's mistake (bad_request), not as a server error."""
    base = server.removesuffix("/v1")

    def count(status: str) -> float:
        text = request("GET", f"{base}/metrics")[2].decode()
        line = [x for x in text.splitlines() if x.startswith(f'perceive_requests_total{{status="{status}"}}')]
        return float(line[0].split()[-1]) if line else 0.0

    first = user(EXAMPLES / "card_0.png")
    crop = {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "image_url", "image_url": {
        "url": data_url(EXAMPLES / "card_0.png")}}]}
    cases = [
        # OpenAI's shape without the server's perceive.text: a VPT call cannot be rebuilt from tool_calls
        ([first, {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "region_select", "arguments": '{"xs": [4, 5], "ys": [6]}'}}]}, crop], "cannot be rebuilt"),
        # a tool result for a call that was never made
        ([first, {"role": "assistant", "content": "", "tool_calls": [{"id": "call_9", "type": "function", "function": {
            "name": "region_select", "arguments": "{}"}}], "perceive": {"text": "<|region_token_start|><|x_4|>"
            "<|y_6|><|x_5|><|y_7|><|region_token_end|>"}}, crop], "answers no call"),
        # a second question after the answer
        ([first, {"role": "assistant", "content": "460"}, user(EXAMPLES / "card_0.png", "And now?")],
         "one request is one question"),
    ]
    before_bad, before_error = count("bad_request"), count("error")
    for messages, words in cases:
        with pytest.raises(openai.BadRequestError, match=words):
            client.chat.completions.create(model="default", messages=messages,
                                           tools=[{"type": "function", "function": {"name": "region_select"}}])
    assert count("bad_request") == before_bad + len(cases)
    assert count("error") == before_error
