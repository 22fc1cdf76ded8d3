"""Images enter upright, and an input the model cannot look at is the user's error.

A phone photo stored sideways with EXIF orientation 6 is read as it is shown at every place an
image enters: ``load_image`` itself, ``perceive ask``, ``PerceptionLoop.ask``, ``perceive serve``
(over HTTP, with the openai client), the remote engine (which sends upright pixels), the eval
dataset reader and the card generator's backgrounds. The shipped model reads the sideways JPEG
of ``card_0.png`` as it reads the upright PNG: ``460``, with the same boxes, in upright pixels.

An input image under 8 px a side, or more elongated than 200:1, gets an error addressed to the
user (give a larger image, crop the panorama), printed once; the wording addressed to the model
("choose a less extreme region") stays for crops it chose (tests/test_loop.py).
"""

from __future__ import annotations

import ast
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from perceive.errors import ImageError
from perceive.images import (
    MAX_INPUT_ASPECT,
    MIN_INPUT_SIDE,
    ORIENTATION_TAG,
    check_image_file,
    check_input_size,
    load_image,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "models" / "default" / "examples"
CARD = EXAMPLES / "card_0.png"
QUESTION = "What number is written on the card?"
CARD_BOX = tuple(json.loads((EXAMPLES / "examples.json").read_text())["card_0.png"]["box"])  # upright pixels

# how each orientation stores an upright HxWx3 array U (EXIF 2.3, written out here without Pillow,
# so the test checks what the tags mean, not Pillow against itself)
STORED = {1: lambda u: u, 2: lambda u: u[:, ::-1], 3: lambda u: u[::-1, ::-1], 4: lambda u: u[::-1],
          5: lambda u: u.transpose(1, 0, 2), 6: lambda u: np.rot90(u, 1),
          7: lambda u: np.rot90(u, 2).transpose(1, 0, 2), 8: lambda u: np.rot90(u, -1)}


def tagged(pixels: np.ndarray, orientation: int, fmt: str = "PNG", **save) -> bytes:
    """``pixels`` (HxWx3 uint8, as stored) encoded with EXIF orientation ``orientation``."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, fmt, exif=exif, **save)
    return buf.getvalue()


def sideways(src: Path, dst: Path) -> Path:
    """``src`` as a phone stores a photo taken in portrait: its pixels turned a quarter
    counter-clockwise in a JPEG with orientation 6 ("turn 90 degrees clockwise to show")."""
    upright = np.asarray(Image.open(src).convert("RGB"))
    dst.write_bytes(tagged(STORED[6](upright), 6, "JPEG", quality=95))
    return dst


def boxes(trace) -> list:
    """``(action, box)`` of each hop of a trace (or its JSON form); boxes in the input's pixels."""
    hops = (trace if isinstance(trace, dict) else trace.to_dict())["hops"]
    return [(h["action"], h["box"]) for h in hops]


# -- load_image --------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_reads_upright(orientation, tmp_path):
    upright = np.random.default_rng(orientation).integers(0, 256, (7, 12, 3), dtype=np.uint8)
    raw = tagged(STORED[orientation](upright), orientation)
    path = tmp_path / "photo.png"
    path.write_bytes(raw)
    for source in (path, str(path), raw, Image.open(path)):
        got = load_image(source)
        assert got.size == (12, 7) and np.array_equal(np.asarray(got.convert("RGB")), upright), type(source)
    assert check_image_file(path) == (12, 7)  # the header-only check gives the upright size too


def test_an_upright_image_is_not_turned_twice_nor_the_callers_changed(tmp_path):
    upright = np.random.default_rng(0).integers(0, 256, (7, 12, 3), dtype=np.uint8)
    (tmp_path / "s.png").write_bytes(tagged(STORED[6](upright), 6))
    mine = Image.open(tmp_path / "s.png")
    stored = np.asarray(mine).copy()
    once = load_image(mine)
    assert np.array_equal(np.asarray(load_image(once)), upright)  # its tag is gone: loading it again keeps it
    assert np.array_equal(np.asarray(mine), stored) and mine.getexif()[ORIENTATION_TAG] == 6
    plain = Image.fromarray(upright)
    assert load_image(plain) is plain  # no tag: the caller's image itself, as before


def test_unreadable_exif_reads_the_pixels_as_stored(tmp_path):
    path = tmp_path / "bad_exif.jpg"
    Image.new("RGB", (10, 6), "red").save(path, exif=b"Exif\x00\x00MM\x00*garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even Pillow's "Corrupt EXIF data" warning
        assert load_image(path).size == (10, 6)
        assert check_image_file(path) == (10, 6)


def test_no_module_decodes_an_image_past_load_image():
    """The one door: a new entry point that opens or decodes an image itself would skip the
    EXIF orientation (and the size guards)."""
    offenders = []
    for path in [*(ROOT / "perceive").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        if path == ROOT / "perceive" / "images.py" or "templates" in path.parts:  # templates: not Python yet
            continue
        calls = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
                calls.add(f"{owner}.{node.func.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                calls.add(node.func.id)
        where = path.relative_to(ROOT)
        offenders += [f"{where}: {c}" for c in sorted(calls) if c in ("Image.open", "cv2.imread", "iio.imread")]
        if calls & {"base64.b64decode", "b64decode"} and "load_image" not in calls:
            offenders.append(f"{where}: base64 decoded, never given to load_image")
    assert not offenders, "decode images with perceive.images.load_image: " + "; ".join(offenders)


def test_card_backgrounds_are_read_upright(tmp_path):
    from perceive.data.cards import folder_photos

    upright = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)  # a portrait photo
    (tmp_path / "bg").mkdir()
    (tmp_path / "bg" / "portrait.png").write_bytes(tagged(STORED[6](upright), 6))
    photo = folder_photos(tmp_path / "bg")["portrait"]
    assert photo.size == (20, 30) and np.array_equal(np.asarray(photo), upright)


# -- the shipped model, through every entry point ------------------------------------------------


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory) -> Path:
    return sideways(CARD, tmp_path_factory.mktemp("exif") / "card_0_sideways.jpg")


@pytest.fixture(scope="module")
def default_loop():
    from perceive.loop import PerceptionLoop
    from perceive.model import load_model

    return PerceptionLoop(load_model(ROOT / "models" / "default"))


@pytest.fixture(scope="module")
def upright_answer(default_loop):
    answer = default_loop.ask(CARD, QUESTION)
    assert answer.text == "460" and answer.trace.hops  # the card and its region, as shipped
    return answer


def test_the_sideways_photo_reads_as_upright_in_python(default_loop, upright_answer, jpeg):
    stored = Image.open(jpeg)
    assert stored.getexif()[ORIENTATION_TAG] == 6
    for source in (jpeg, str(jpeg), jpeg.read_bytes(), Image.open(jpeg)):
        answer = default_loop.ask(source, QUESTION)
        assert answer.text == "460", type(source)  # read as stored, the model answers 959
        assert boxes(answer.trace) == boxes(upright_answer.trace)
        assert answer.trace.image_size == (448, 448)
    batch = default_loop.ask_batch([(jpeg, QUESTION), (CARD, QUESTION)])
    assert [a.text for a in batch] == ["460", "460"]


def test_the_sideways_photo_reads_as_upright_on_the_cli(upright_answer, jpeg, tmp_path):
    from typer.testing import CliRunner

    from perceive.cli import app

    r = CliRunner().invoke(app, ["ask", str(jpeg), QUESTION, "--json", "--render", str(tmp_path / "trace.png")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["answer"] == "460" and boxes(out["trace"]) == boxes(upright_answer.trace)
    assert Image.open(tmp_path / "trace.png").size[0] > 0


def test_the_sideways_photo_reads_as_upright_in_eval_data(jpeg, tmp_path):
    """The eval (and training) dataset reader: the image and a crop of it in upright pixels."""
    from perceive.data.dataset import VPTDataset

    data = [{"messages": [{"role": "user", "content": f"<image><image>{QUESTION}"},
                          {"role": "assistant", "content": "460"}],
             "images": [str(jpeg), f"{jpeg}_{','.join(map(str, CARD_BOX))}"]}]
    (tmp_path / "data.json").write_text(json.dumps(data))
    image, crop = VPTDataset(tmp_path / "data.json", policy="reject")[0].images["images"]
    want = load_image(jpeg).convert("RGB")
    assert image.size == (448, 448) and np.array_equal(np.asarray(image), np.asarray(want))
    assert np.array_equal(np.asarray(crop), np.asarray(want.crop(CARD_BOX)))
    # the card is where the upright PNG has it (JPEG: close, not equal)
    diff = np.abs(np.asarray(crop, np.int16) - np.asarray(Image.open(CARD).convert("RGB").crop(CARD_BOX), np.int16))
    assert diff.mean() < 8


def test_eval_reads_the_sideways_photo_upright(jpeg, tmp_path):
    from typer.testing import CliRunner

    from perceive.cli import app

    data = [{"messages": [{"role": "user", "content": f"<image>{QUESTION}"}, {"role": "assistant", "content": "460"}],
             "images": [str(jpeg)]}]
    (tmp_path / "data.json").write_text(json.dumps(data))
    r = CliRunner().invoke(app, ["eval", "--model", str(ROOT / "models" / "default"), "--data",
                                 str(tmp_path / "data.json"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    records = json.loads((tmp_path / "run" / "eval.json").read_text())["records"]
    assert [rec["prediction"] for rec in records] == ["460"]


def test_serve_and_the_remote_engine_read_the_sideways_photo_upright(default_loop, upright_answer, jpeg,
                                                                     monkeypatch):
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    import perceive.serve.messages as messages
    from perceive.config import RemoteConfig
    from perceive.remote import RemoteLoop
    from perceive.testing.live import live_server, user_message

    received = []  # every image the server decoded, as it decoded it

    decode = messages.decode_image_url

    def spy(url, local_root, **kw):
        image = decode(url, local_root, **kw)
        received.append(image)
        return image

    monkeypatch.setattr(messages, "decode_image_url", spy)
    with live_server(default_loop, model_name="default") as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        # the JPEG's own bytes, tag and all, in a data URL
        r = client.chat.completions.create(model="default", messages=[user_message(jpeg, QUESTION)])
        assert r.choices[0].message.content == "460"
        assert boxes(r.model_extra["perceive"]["trace"]) == boxes(upright_answer.trace)

        received.clear()
        answer = RemoteLoop(RemoteConfig(url=url, mode="client", max_retries=0)).ask(jpeg, QUESTION)
        assert answer.ok, answer.error
        assert answer.text == "460" and boxes(answer.trace) == boxes(upright_answer.trace)
        # the remote client sent upright pixels (a lossless PNG without a tag), not the stored ones
        first = received[0].convert("RGB")
        assert np.array_equal(np.asarray(first), np.asarray(load_image(jpeg).convert("RGB")))
        assert received[0].getexif().get(ORIENTATION_TAG, 1) == 1

        tiny = RemoteLoop(RemoteConfig(url=url, mode="client", max_retries=0)).ask(Image.new("RGB", (1, 1)), QUESTION)
        assert tiny.error["type"] == "ImageError" and "1x1 px: too small" in tiny.error["message"]
        assert not tiny.trace.hops


# -- input images the model cannot look at -------------------------------------------------------


@pytest.mark.parametrize("size,words", [
    ((1, 1), "is 1x1 px: too small to look at"),
    ((MIN_INPUT_SIDE - 1, 500), "too small to look at"),
    ((20000, 50), "is 20000x50 px: its aspect ratio of 400:1 is over the 200:1"),
    ((50, 20000), "aspect ratio of 400:1"),
    ((MIN_INPUT_SIDE * MAX_INPUT_ASPECT + 1, MIN_INPUT_SIDE), "is over the 200:1"),
])
def test_a_shape_the_model_cannot_look_at_is_refused_with_what_to_do(size, words):
    with pytest.raises(ImageError, match=words) as info:
        check_input_size(size, "the image")
    hint = info.value.hint
    assert ("larger image" in hint) if "small" in words else ("crop the panorama" in hint)
    assert "region" not in hint  # addressed to the user, not the model


@pytest.mark.parametrize("size", [(MIN_INPUT_SIDE, MIN_INPUT_SIDE), (MIN_INPUT_SIDE * MAX_INPUT_ASPECT, MIN_INPUT_SIDE),
                                  (448, 448), (3000, 19)])
def test_shapes_the_model_can_look_at_pass(size):
    check_input_size(size)


def test_a_bad_input_shape_fails_its_sample_only(model, photo):
    from perceive.loop import LoopOptions, PerceptionLoop

    loop = PerceptionLoop(model, options=LoopOptions(max_new_tokens=4))
    out = loop.ask_batch([(Image.new("RGB", (1, 1)), "What?"), (Image.new("RGB", (20000, 50)), "What?"),
                          (photo, "What?")])
    for a, words in zip(out[:2], ("the input image is 1x1 px", "the input image is 20000x50 px"), strict=True):
        assert a.error["type"] == "ImageError" and words in a.error["message"], a.error
        assert not a.trace.hops and "region" not in a.error["hint"]
    assert out[2].ok


def test_the_cli_prints_an_input_shape_error_once(tmp_path):
    """``graph run`` has no early header check: the sample's own error, printed once."""
    from typer.testing import CliRunner

    from perceive.cli import app

    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    r = CliRunner().invoke(app, ["graph", "run", "free_choice", "--image", str(tmp_path / "one.png"), "--question",
                                 QUESTION, "--model", str(ROOT / "models" / "default")])
    assert r.exit_code == 1
    assert r.output.count("1x1 px: too small to look at") == 1, r.output
    assert "give a larger image" in r.output and "region" not in r.output.split("->")[-1]


# -- ask --render into a path it cannot write ------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_an_unwritable_render_path_keeps_the_answer(tmp_path, as_json):
    """Tests run as root, where a read-only folder is still writable: a path under a regular
    FILE cannot be written by anyone."""
    from typer.testing import CliRunner

    from perceive.cli import app

    (tmp_path / "afile").write_text("not a folder")
    argv = ["ask", str(CARD), QUESTION, "--render", str(tmp_path / "afile" / "out.png")] + (["--json"] if as_json
                                                                                           else [])
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 1
    error = "error: cannot write the trace picture --render"
    assert error in r.output and "afile is a file, not a folder" in r.output and "Traceback" not in r.output
    if as_json:  # the JSON stays whole on stdout, the error goes to stderr
        assert json.loads(r.stdout)["answer"] == "460" and error not in r.stdout
    else:
        assert r.output.index("460") < r.output.index(error)  # the answer first
        assert "trace picture:" not in r.output
