"""``perceive mcp`` through the MCP SDK's real client: the tool list and schemas; crop, zoom, tiles and OCR
with the pixels the perception loop's own Observer gives for the same call (decoded from the PNG on the
wire); a crop of a crop; a graph tool answering as ``perceive ask``; a scaffolded plugin served with no
code beyond the plugin; bad calls (unknown tool, bad box, unknown id, a hung plugin) answered as tool
errors, the server going on and printing no traceback. Over stdio (one server for the module, the SDK's
``ClientSession``) and streamable HTTP (``mcp.Client``), and in process for the translation itself."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import pytest

pytest.importorskip("mcp")

import anyio  # noqa: E402
from anyio.from_thread import start_blocking_portal  # noqa: E402
from mcp import Client, ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from PIL import Image  # noqa: E402

from perceive.mcp.results import ImagePart, TextPart, ToolResult, ToolSpec  # noqa: E402
from perceive.mcp.server import build_server, result_of  # noqa: E402
from perceive.testing.traces import untimed  # noqa: E402
from tests.conftest import make_dist  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "models" / "default" / "examples"
CARD = EXAMPLES / "card_0.png"  # 448x448; its number "460" at [253, 389, 296, 415]
NUMBER = [253, 389, 296, 415]
CARD_URL = "data:image/png;base64," + base64.b64encode(CARD.read_bytes()).decode()
QUESTION = "What number is written on the card?"
HANG = """
import time

from perceive import Action, TriggerGrammar, View, hookimpl


class Hang(Action):
    name = "hang"
    description = "Never returns in time (a test plugin)."
    grammar = TriggerGrammar(start="<|hang_start|>", end="<|hang_end|>")
    observation = "view"

    def run(self, call, context):
        time.sleep(30)
        return View(image=context.image.copy(), frame=context.frame)


@hookimpl
def perceive_register_actions():
    return [Hang()]
"""


def png_pixels(item) -> Image.Image:
    """An MCP image content item's picture."""
    assert item.type == "image" and item.mime_type == "image/png"
    return Image.open(io.BytesIO(base64.b64decode(item.data)))


def loop_views(registry, calls: list[tuple[str, dict, str]]) -> list:
    """The views the perception loop's own Observer gives for ``calls`` (``(action, args, target)``, run in
    order on one sample of the card, as the loop runs a sample's hops), the last call's."""
    import torch

    from perceive.actions import ActionCall
    from perceive.encoders import EncoderHub
    from perceive.images import as_rgb, load_image
    from perceive.loop.observe import Observer
    from perceive.loop.options import LoopOptions
    from perceive.loop.sample import Sample
    from perceive.observations import View
    from perceive.trace import Trace

    observer = Observer(registry, EncoderHub(registry.encoder_specs()), registry.protocol("vpt"), LoopOptions())
    sample = Sample(0, as_rgb(load_image(CARD)), Trace(), None, torch.Generator())
    obs = ()
    for action, args, target in calls:
        obs, hop = observer.run(sample, ActionCall(action, registry.action(action).Args(**args)), {}, target, None)
        assert obs is not None, hop.error
        if isinstance(obs[0], View):
            observer.record_views(sample, obs, hop)
    return list(obs)




# -- the translation, in process ------------------------------------------------------------------


class FakeToolbox:
    """A toolbox of two tools: ``look`` answers a red 3x2 view and a text; ``boom`` raises (a bug)."""

    def tools(self) -> list[ToolSpec]:
        schema = {"type": "object", "properties": {"image": {"type": "string"}}, "required": ["image"]}
        return [ToolSpec("look", "Look.", schema), ToolSpec("boom", "Raises.", schema, read_only=False)]

    def is_graph(self, name) -> bool:
        return False

    def call(self, name, arguments):
        if name == "boom":
            raise RuntimeError("kaboom\nsecond line")
        return ToolResult([ImagePart(Image.new("RGB", (3, 2), (255, 0, 0)), "img1.v1", (1, 2, 4, 4)),
                           TextPart("img1.v1: box [1, 2, 4, 4]")], {"views": [{"id": "img1.v1"}]})


def test_a_result_becomes_png_image_content_then_text_with_its_structured_content():
    img = Image.new("RGB", (5, 4))
    img.putpixel((2, 1), (10, 200, 30))
    out = result_of(ToolResult([ImagePart(img, "img1.v1", (0, 0, 5, 4)), TextPart("img1.v1")], {"views": []}))
    assert [c.type for c in out.content] == ["image", "text"] and not out.is_error
    assert png_pixels(out.content[0]).tobytes() == img.tobytes() and out.content[1].text == "img1.v1"
    assert out.structured_content == {"views": []}
    err = result_of(ToolResult([TextPart("bad box\n  -> fix it")], {"error": {"code": "x"}}, is_error=True))
    assert err.is_error and err.content[0].text == "bad box\n  -> fix it"


async def _in_process(server):
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        boom = await client.call_tool("boom", {"image": "img1"})
        look = await client.call_tool("look", {"image": "img1"})
    return tools, boom, look


def test_the_sdks_client_lists_and_calls_and_a_bug_is_one_tool_error_line(caplog):
    caplog.set_level(logging.ERROR)
    tools, boom, look = anyio.run(_in_process, build_server(FakeToolbox()))
    assert tools["look"].input_schema["required"] == ["image"] and tools["look"].annotations.read_only_hint
    assert tools["boom"].annotations.read_only_hint is False and tools["look"].annotations.open_world_hint is False
    assert boom.is_error and boom.content[0].text == (
        "internal error (a bug in perceive or a plugin): RuntimeError: kaboom\n"
        "  -> the server goes on; report it with the call's arguments")
    assert [(r.name, r.getMessage(), r.exc_info) for r in caplog.records if r.name == "perceive.mcp"] == [
        ("perceive.mcp", "tool boom failed: internal error (a bug in perceive or a plugin): RuntimeError: kaboom",
         None)]
    assert not look.is_error and png_pixels(look.content[0]).getpixel((0, 0)) == (255, 0, 0)
    assert look.structured_content == {"views": [{"id": "img1.v1"}]}


class QueuedGraphs(FakeToolbox):
    """``look`` and a graph tool ``slow`` whose calls take one lock (one model), as GraphTools' do, and wait for
    ``go``; ``running`` counts the slow calls inside at once, most at ``peak``."""

    def __init__(self):
        self.lock, self.go, self.count_lock = threading.Lock(), threading.Event(), threading.Lock()
        self.running = self.peak = self.started = 0

    def tools(self) -> list[ToolSpec]:
        return [*super().tools(), ToolSpec("slow", "A graph.", {"type": "object", "properties": {}})]

    def is_graph(self, name) -> bool:
        return name == "slow"

    def call(self, name, arguments):
        if name != "slow":
            return super().call(name, arguments)
        with self.lock:
            with self.count_lock:
                self.started += 1
                self.running += 1
                self.peak = max(self.peak, self.running)
            self.go.wait(30)
            with self.count_lock:
                self.running -= 1
        return ToolResult([TextPart("done")], {})


async def _many_graph_calls(toolbox: QueuedGraphs, calls: int):
    async with Client(build_server(toolbox)) as client:
        results = []

        async def slow():
            results.append(await client.call_tool("slow", {}))

        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(slow)
            await anyio.sleep(0.5)
            threads = threading.active_count()
            with anyio.fail_after(10):  # hangs if the waiting graph calls took anyio's 40 worker threads
                look = await client.call_tool("look", {"image": "img1"})
            toolbox.go.set()
    return results, look, threads


def test_graph_calls_wait_in_the_event_loop_so_action_calls_still_run():
    toolbox = QueuedGraphs()
    before = threading.active_count()
    results, look, threads = anyio.run(_many_graph_calls, toolbox, 45)
    assert not look.is_error and len(results) == 45 and not any(r.is_error for r in results)
    assert toolbox.peak == 1 and toolbox.started == 45 and threads - before < 10, (threads, before)


def test_a_structured_result_that_is_not_json_is_a_tool_error(caplog):
    class Odd(FakeToolbox):
        def call(self, name, arguments):
            return ToolResult([TextPart("x")], {"when": object()})

    _, boom, look = anyio.run(_in_process, build_server(Odd()))
    assert look.is_error and look.content[0].text.startswith(
        "internal error (a bug in perceive or a plugin): TypeError: Object of type object is not JSON serializable")


def test_without_the_sdk_perceive_mcp_says_what_to_install(monkeypatch):
    from typer.testing import CliRunner

    from perceive.cli import app

    monkeypatch.setitem(sys.modules, "mcp.server.lowlevel", None)  # import fails as if not installed
    result = CliRunner().invoke(app, ["mcp"])
    assert result.exit_code == 1
    assert result.output == "error: perceive mcp needs the mcp extra (mcp is missing): pip install 'perceive[mcp]'\n"


# -- over stdio: one server for the module ----------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site folder holding two installed-looking plugins: the one ``perceive plugins new quadrant`` writes,
    and ``hang``, whose calls never return in time."""
    from perceive.scaffold import new_plugin

    base = tmp_path_factory.mktemp("mcp")
    code = (new_plugin("quadrant", base / "scaffold") / "src" / "perceive_quadrant" / "__init__.py").read_text()
    site = base / "site"
    make_dist(site, "perceive-quadrant", {"perceive_quadrant": code}, {"quadrant": "perceive_quadrant"}, enable=False)
    make_dist(site, "perceive-mcp-hang", {"perceive_mcp_hang": HANG}, {"hang": "perceive_mcp_hang"}, enable=False)
    return site


def child_env(site: Path) -> dict[str, str]:
    """What a server process needs beyond the few variables the SDK's stdio client passes on: the suite's
    plugins and the two above."""
    return {"PERCEIVE_PLUGINS": "perceive,perceive-quadrant,perceive-mcp-hang", "PYTHONPATH": str(site),
            "PYTHONUNBUFFERED": "1"}


@asynccontextmanager
async def stdio_session(params: StdioServerParameters, errlog):
    async with stdio_client(params, errlog=errlog) as (read, write), \
            ClientSession(read, write, read_timeout_seconds=120) as session:
        await session.initialize()
        yield session


class Served:
    """A client session run in a thread of its own (a blocking portal), so that one server serves every
    test of the module; ``close()`` closes the client's side, which ends the server."""

    def __init__(self, params: StdioServerParameters, errlog: Path):
        self.errlog = errlog
        self._stack = ExitStack()
        portal = self._stack.enter_context(start_blocking_portal())
        log = self._stack.enter_context(errlog.open("w"))
        self.session = self._stack.enter_context(portal.wrap_async_context_manager(stdio_session(params, log)))
        self.portal = portal

    def tools(self) -> dict:
        return {t.name: t for t in self.portal.call(self.session.list_tools).tools}

    def call(self, name: str, arguments: dict):
        return self.portal.call(self.session.call_tool, name, arguments)

    def ok(self, name: str, arguments: dict):
        result = self.call(name, arguments)
        assert not result.is_error, result.content[0].text
        return result

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def stdio(site, tmp_path_factory):
    params = StdioServerParameters(command=sys.executable, args=["-m", "perceive", "mcp", "--allow-local-images",
                                                                 str(EXAMPLES)], env=child_env(site), cwd=str(ROOT))
    served = Served(params, tmp_path_factory.mktemp("stdio") / "stderr.txt")
    yield served
    served.close()


@pytest.fixture(scope="module")
def reference():
    """The registry of the server's plugins, to run the loop's own actions on."""
    from perceive.plugins import load_registry

    return load_registry(only=["perceive"])


@pytest.mark.slow
def test_stdio_lists_every_tool_with_its_schema(stdio):
    tools = stdio.tools()
    assert ["register_image", "ocr", "quadrant", "region_select", "tiles", "zoom"] == [
        n for n in tools if not n.startswith("graph_") and n != "hang"]
    assert {"graph_free_choice", "graph_region_then_answer", "graph_region_then_ocr"} <= set(tools)
    crop = tools["region_select"].input_schema
    assert crop["required"] == ["image"] and crop["additionalProperties"] is False
    assert {"image", "coordinates", "box", "xs", "ys", "grid", "margin"} == set(crop["properties"])  # no options
    assert crop["properties"]["coordinates"]["enum"] == ["pixels", "relative_1000", "relative_1"]
    assert "[x0, y0, x1, y1]" in crop["properties"]["box"]["description"]
    assert "$ref" not in json.dumps([t.input_schema for t in tools.values()])
    assert all("properties" in t.input_schema and t.annotations.read_only_hint for t in tools.values())
    assert set(tools["graph_free_choice"].input_schema["properties"]) == {"image", "question"}
    assert not any("options" in t.input_schema["properties"] for t in tools.values())


@pytest.mark.slow
@pytest.mark.parametrize(("action", "args"), [("region_select", {"box": NUMBER}), ("zoom", {"box": NUMBER}),
                                              ("tiles", {"rows": 2, "cols": 3})])
def test_views_over_stdio_hold_the_pixels_the_loop_shows(stdio, reference, action, args):
    result = stdio.ok(action, {"image": str(CARD), **args})
    want = loop_views(reference, [(action, args, "root")])
    images = [c for c in result.content if c.type == "image"]
    assert [png_pixels(c).tobytes() for c in images] == [v.image.tobytes() for v in want]
    views = result.structured_content["views"]
    assert [v["box"] for v in views] == [[v.box.x0, v.box.y0, v.box.x1, v.box.y1] for v in want]
    group = result.structured_content["image"]  # the card: img1 for every test of the module
    ids = [v["id"] for v in views]
    assert len(set(ids)) == len(want) and all(i.startswith(f"{group}.v") for i in ids)
    assert result.content[-1].type == "text" and all(v["id"] in result.content[-1].text for v in views)


@pytest.mark.slow
def test_ocr_over_stdio_reads_the_loops_text_with_its_boxes(stdio, reference):
    pytest.importorskip("rapidocr_onnxruntime")
    result = stdio.ok("ocr", {"image": str(CARD), "box": NUMBER})
    [want] = loop_views(reference, [("ocr", {"box": NUMBER}, "root")])
    assert want.text == "460" and result.structured_content["text"] == "460"
    assert result.structured_content["boxes"] == [{"box": [b.x0, b.y0, b.x1, b.y1], "text": t} for b, t in want.boxes]
    assert [c.type for c in result.content] == ["text"] and "460" in result.content[0].text


@pytest.mark.slow
def test_a_crop_of_a_crop_over_stdio_names_its_parent_and_the_originals_box(stdio, reference):
    first = stdio.ok("register_image", {"image": "data:image/png;base64," + base64.b64encode(CARD.read_bytes())
                                        .decode()}).structured_content["id"]
    v1 = stdio.ok("region_select", {"image": first, "box": [240, 380, 310, 420]}).structured_content["views"][0]
    result = stdio.ok("region_select", {"image": v1["id"], "box": [100, 250, 500, 750],
                                        "coordinates": "relative_1000"})  # [7, 10, 35, 30] of the 70x40 crop
    [view] = result.structured_content["views"]
    [want] = loop_views(reference, [("region_select", {"box": [240, 380, 310, 420]}, "root"),
                                    ("region_select", {"box": [7, 10, 35, 30]}, "v1")])
    assert view == {"id": f"{first}.v2", "box": [247, 390, 275, 410], "size": [28, 20], "parent": v1["id"],
                    "label": "region"}
    assert png_pixels(result.content[0]).tobytes() == want.image.tobytes()


@pytest.mark.slow
def test_a_scaffolded_plugin_is_a_tool_with_no_code_beyond_the_plugin(stdio):
    tool = stdio.tools()["quadrant"]
    assert tool.description.startswith("Show one quadrant of the image as a new view.")
    assert tool.input_schema["properties"]["quadrant"] == {"maximum": 3, "minimum": 0, "title": "Quadrant",
                                                           "type": "integer"}
    result = stdio.ok("quadrant", {"image": str(CARD), "quadrant": 3})
    assert result.structured_content["views"][0]["box"] == [224, 224, 448, 448]
    assert png_pixels(result.content[0]).tobytes() == Image.open(CARD).convert("RGB").crop((224, 224, 448, 448)) \
        .tobytes()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "arguments", "want"), [
    ("zom", {"image": "img1"}, "no tool named 'zom'\n  -> did you mean 'zoom'?"),
    ("zoom", {"image": "img1", "box": [500, 0, 600, 10]}, "zoom: box [500, 0, 600, 10] lies outside the 448x448 "
     "view 'img1'\n  -> img1 is 448x448 px"),
    ("zoom", {"image": "img1", "box": [5, 5, 5, 9]}, "zoom: degenerate box [5, 5, 5, 9]: needs x0 < x1 and y0 < y1"),
    ("zoom", {"image": "img404.v1", "box": NUMBER}, "unknown image id 'img404.v1': never registered, or evicted"),
    ("quadrant", {"image": "img1", "quadrant": 4}, "quadrant: 1 invalid argument(s)\n  quadrant: Input should be "
     "less than or equal to 3 (got 4)\n  -> the tool's input schema"),
])
def test_bad_calls_are_tool_errors_and_the_server_goes_on(stdio, name, arguments, want):
    stdio.ok("register_image", {"image": str(CARD)})  # img1 (the same image again is the same id)
    result = stdio.call(name, arguments)
    assert result.is_error and [c.type for c in result.content] == ["text"]
    assert want in result.content[0].text, result.content[0].text
    assert result.structured_content["error"]["message"] == result.content[0].text.partition("\n  -> ")[0]
    stdio.ok("zoom", {"image": "img1", "box": NUMBER})


@pytest.mark.slow
def test_a_graph_tool_over_stdio_answers_as_perceive_ask(stdio, site):
    result = stdio.ok("graph_free_choice", {"image": str(CARD), "question": QUESTION})
    from typer.testing import CliRunner

    from perceive.cli import app

    # `perceive ask --json` in this process (the model loads once more, not a whole interpreter)
    ask = CliRunner().invoke(app, ["ask", str(CARD), QUESTION, "--json"])
    assert ask.exit_code == 0, ask.output
    want = json.loads(ask.stdout)
    got = result.structured_content
    assert got["answer"] == want["answer"] == result.content[0].text and got["graph"] == want["graph"]
    assert untimed(got["trace"]) == untimed(want["trace"])
    assert want["trace"]["hops"], "the default model looks at the card first"


@pytest.mark.slow
def test_the_stdio_server_ends_with_its_client_and_printed_no_traceback(stdio):
    stdio.ok("zoom", {"image": str(CARD), "box": NUMBER})
    stdio.close()  # closes the server's stdin, waits 2 s for it to end, then sends SIGTERM
    err = stdio.errlog.read_text()
    # the server stopped by itself (unloading torch may then take a while: the client's SIGTERM cuts it short)
    assert err.startswith("perceive mcp: ") and err.endswith("perceive mcp: the client closed stdin; stopped\n"), err
    assert "Traceback" not in err


# -- over streamable HTTP ---------------------------------------------------------------------------


def start_http(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``perceive mcp --http ARGS`` and the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "perceive", "mcp", "--http", *args], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, line.rsplit(" on ", 1)[1].strip()


async def _http_session(url: str):
    from perceive.dispatch import MAX_ABANDONED

    async with Client(url, read_timeout_seconds=60) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        crop = await client.call_tool("region_select", {"image": str(CARD), "box": NUMBER})
        hung = [await client.call_tool("hang", {"image": "img1"}) for _ in range(MAX_ABANDONED + 1)]
        after = await client.call_tool("region_select", {"image": "img1", "box": NUMBER})
    return tools, crop, hung, after


@pytest.mark.slow
def test_http_serves_the_tools_survives_a_hung_plugin_and_exits_0_on_sigterm(site, reference):
    proc, url = start_http(["--port", "0", "--action-timeout", "0.2", "--allow-local-images", str(EXAMPLES)],
                           child_env(site))
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
        tools, crop, hung, after = anyio.run(_http_session, url)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert {"register_image", "region_select", "quadrant", "hang", "graph_free_choice"} <= tools
    [want] = loop_views(reference, [("region_select", {"box": NUMBER}, "root")])
    assert png_pixels(crop.content[0]).tobytes() == want.image.tobytes()
    assert [h.is_error for h in hung] == [True, True, True]
    assert hung[0].content[0].text.startswith("action 'hang' did not return within 0.2 s\n  -> raise "
                                              "runtime.action_timeout_s (or --action-timeout)")
    assert hung[-1].content[0].text.startswith("action 'hang' is quarantined: 2 earlier calls passed their timeout")
    assert not after.is_error and after.structured_content["views"][0]["id"] == "img1.v2"
    assert proc.returncode == 0, err
    assert out.strip().endswith("stopped") and "Traceback" not in err, err


@pytest.mark.slow
def test_http_refuses_a_foreign_host_header_and_a_body_over_the_limit(site):
    import urllib.error
    import urllib.request

    def post(url: str, body: dict, **headers) -> int:
        request = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers={
            "Accept": "application/json, text/event-stream", "Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    proc, url = start_http(["--port", "0", "--set", "mcp.max_body_mb=0.01"], child_env(site))
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    try:
        statuses = [post(url, ping, Host="evil.example"), post(url, {**ping, "pad": "x" * 20_000})]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert statuses == [421, 413] and proc.returncode == 0


# -- the command line's errors over stdio -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "code", "want"), [
    (["--config", "bad.yaml"], 1, "error: bad.yaml:2:1: not valid YAML"),
    (["--set", "mcp.graphs=[no_such_graph]"], 1, "error: the command line: mcp.graphs[0] (no_such_graph) cannot be "
                                                 "served"),
    (["--allow-local-images", "nowhere"], 2, "error: --allow-local-images nowhere: not a folder"),
    (["--port", "9000"], 2, "error: --host and --port are for --http"),
])
def test_a_mistake_over_stdio_is_one_error_on_stderr_and_nothing_on_stdout(tmp_path, argv, code, want):
    (tmp_path / "bad.yaml").write_text("[unclosed\n")
    proc = subprocess.Popen([sys.executable, "-m", "perceive", "mcp", *argv], cwd=tmp_path, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PERCEIVE_PLUGINS": "perceive"})
    try:  # stdin stays open, as an agent's: the process ends by itself
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        proc.stdin.close()
    assert proc.returncode == code and out == "", out
    assert err.startswith(want) and "Traceback" not in err, err


@pytest.mark.slow
def test_the_server_exits_at_once_when_the_client_closes_stdin_during_a_hung_call(site, tmp_path):
    def send(message: dict) -> None:
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        proc.stdin.flush()

    env = {**os.environ, **child_env(site)}
    proc = subprocess.Popen([sys.executable, "-m", "perceive", "mcp", "--set", "mcp.graphs=[]"], cwd=tmp_path,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        send({"id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                                          "clientInfo": {"name": "test", "version": "0"}}})
        assert json.loads(proc.stdout.readline())["id"] == 1
        send({"method": "notifications/initialized"})
        send({"id": 2, "method": "tools/call", "params": {"name": "hang", "arguments": {"image": CARD_URL}}})
        time.sleep(2)  # the call is in its plugin, which sleeps 30 s
        proc.stdin.close()
        start = time.monotonic()
        proc.wait(timeout=25)
        took = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode == 0 and took < 5, (took, proc.stderr.read())


@pytest.mark.parametrize(("host", "folder", "warns"), [
    ("127.0.0.1", EXAMPLES, False), ("::1", EXAMPLES, False), ("localhost", EXAMPLES, False),
    ("0.0.0.0", None, False), ("0.0.0.0", EXAMPLES, True), ("192.168.1.4", EXAMPLES, True), ("box.lan", EXAMPLES, True),
])
def test_serving_local_images_beyond_loopback_warns(host, folder, warns):
    from perceive.cli.mcp_cmd import exposure_warning

    warning = exposure_warning(host, folder)
    assert (warning is not None) == warns
    assert warning is None or (warning.startswith(f"warning: perceive mcp listens on {host} and serves the images "
                                                  f"under {folder}") and "shared by all its clients" in warning)
