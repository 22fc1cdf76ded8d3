"""docs/how-to/use-perceive-from-an-agent.md runs as written, where it can offline: the desktop agent's
``mcpServers`` entry starts a server the MCP SDK's client lists and calls; so does lmms-eval's launcher,
started as lmms-eval starts it (``python FILE``, no environment of its own); the HTTP command serves the
URL it prints, and the page's HTTP client runs against it; the page's stdio client runs as a script (the SDK's
client hands the server its own stderr, which a test's captured stderr cannot be). The placeholders
``/ABSOLUTE/PATH/TO/...`` are this venv's ``perceive`` and a folder of images; the HTTP port is a free one."""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp")

import anyio  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

from tests.conftest import VENV_BIN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "how-to" / "use-perceive-from-an-agent.md"
CARD = ROOT / "models" / "default" / "examples" / "card_0.png"
PERCEIVE = "/ABSOLUTE/PATH/TO/perceive/.venv/bin/perceive"

pytestmark = pytest.mark.slow  # each test starts perceive mcp


def block(lang: str, containing: str) -> str:
    """The page's one ```LANG block holding ``containing``."""
    found = [b for b in re.findall(rf"```{lang}\n(.*?)```", PAGE.read_text(), re.S) if containing in b]
    assert len(found) == 1, f"{len(found)} ```{lang} blocks of {PAGE.name} hold {containing!r}"
    return found[0]


def filled(text: str, images: Path) -> str:
    """``text`` with the page's placeholders: this venv's perceive, and ``images`` for the image folders."""
    for folder in ("/ABSOLUTE/PATH/TO/images", "/ABSOLUTE/PATH/TO/lmms-work"):
        text = text.replace(folder, str(images))
    return text.replace(PERCEIVE, str(VENV_BIN / "perceive"))


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(CARD, folder / "card_0.png")
    return folder


async def _list_and_crop(params: StdioServerParameters, image: str, errlog):
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        names = [t.name for t in (await session.list_tools()).tools]
        crop = await session.call_tool("region_select", {"image": image, "box": [240, 380, 310, 420]})
    return names, crop


def list_and_crop(params: StdioServerParameters, image: str, tmp_path: Path):
    with (tmp_path / "stderr.txt").open("w+") as errlog:
        names, crop = anyio.run(_list_and_crop, params, image, errlog)
        errlog.seek(0)
        assert "Traceback" not in errlog.read()
    assert not crop.is_error, crop.content[0].text
    assert [c.type for c in crop.content] == ["image", "text"] and "img1.v1: box [240, 380, 310, 420]" in \
        crop.content[1].text
    return names


def test_the_desktop_agents_config_starts_a_server_the_client_lists_and_calls(images, tmp_path):
    config = json.loads(filled(block("json", '"mcpServers"'), images))
    entry = config["mcpServers"]["perceive"]
    assert Path(entry["command"]).is_absolute() and entry["args"][0] == "mcp"
    names = list_and_crop(StdioServerParameters(**entry), "card_0.png", tmp_path)  # a path under the folder
    assert {"register_image", "region_select", "zoom", "tiles", "ocr", "graph_free_choice"} <= set(names)


def test_lmms_evals_launcher_starts_a_server_as_lmms_eval_starts_it(images, tmp_path):
    launcher = tmp_path / "perceive_mcp.py"
    launcher.write_text(filled(block("python", "os.execv("), images))
    shutil.copy(CARD, images / "0b6c3f1e.jpg")  # as lmms-eval saves an input image in its work_dir
    names = list_and_crop(StdioServerParameters(command=sys.executable, args=[str(launcher)]),
                          str(images / "0b6c3f1e.jpg"), tmp_path)
    assert "region_select" in names and not [n for n in names if n.startswith("graph_")]


def test_the_http_command_serves_the_url_it_prints_and_the_pages_client_runs(images, monkeypatch, capsys):
    [command] = [line for line in block("bash", "mcp --http").splitlines() if line.startswith(".venv/bin/perceive")]
    argv = [str(VENV_BIN / "perceive") if a == ".venv/bin/perceive" else "0" if a == "8765" else a
            for a in shlex.split(command)]
    proc = subprocess.Popen(argv, cwd=images.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r" on (http://127\.0\.0\.1:\d+/mcp)$", line.strip())
        assert url, line + proc.stderr.read() if proc.poll() is not None else line
        doc_url = "http://127.0.0.1:8765/mcp"
        client = block("python", f'Client("{doc_url}")').replace(doc_url, url.group(1))
        monkeypatch.chdir(images.parent)
        exec(compile(client, PAGE.name, "exec"), {"__name__": "docs_http_client"})
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    printed = capsys.readouterr().out.splitlines()
    assert {"register_image", "tiles", "zoom"} <= set(ast.literal_eval(printed[0]))  # the names, as printed
    assert printed[1:] == ["registered the image as img1 (448x448 px)",
                           "tiles on img1: 2 new view(s); boxes [x0, y0, x1, y1] in img1's pixels:",
                           "  img1.v1: box [0, 0, 224, 448], 224x448 px",
                           "  img1.v2: box [224, 0, 448, 448], 224x448 px"]
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert out.strip().endswith("stopped")


def test_the_pages_stdio_client_runs_as_a_script(tmp_path):
    from PIL import Image

    Image.open(CARD).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    (tmp_path / "client.py").write_text(block("python", "stdio_client(server)"))
    run = subprocess.run([sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout.splitlines() == [
        "registered the image as img1 (448x448 px)",
        "region_select on img1: 1 new view(s); boxes [x0, y0, x1, y1] in img1's pixels:",
        "  img1.v1: box [240, 380, 310, 420], 70x40 px",
        "zoom on img1.v1: 1 new view(s); boxes [x0, y0, x1, y1] in img1's pixels:",
        "  img1.v2: box [240, 380, 275, 420], 392x448 px"]
    assert Image.open(tmp_path / "crop.png").size == (70, 40)
