import numpy as np
import pytest
from PIL import Image

from perceive.errors import ImageError
from perceive.images import as_rgb, load_image


def test_load_paths_bytes_arrays(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (5, 4), "blue").save(p)
    assert load_image(p).size == (5, 4)
    assert load_image(p.read_bytes()).size == (5, 4)
    assert load_image(np.zeros((4, 5, 3), np.uint8)).size == (5, 4)


def test_corrupt_and_truncated_images(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(bad)
    good = tmp_path / "g.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageError):
        load_image(cut)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="unsupported"):
        load_image(3.5)


def test_as_rgb_composites_alpha_on_white():
    im = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (10, 20, 30, 255))
    rgb = as_rgb(im)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 0)) == (10, 20, 30)
    assert as_rgb(Image.new("L", (1, 1), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_empty_images_are_errors():
    for shape in ((0, 0, 3), (0, 5), (5, 0, 3), (0, 7, 4)):
        with pytest.raises(ImageError, match=r"the array is empty \(shape"):
            load_image(np.zeros(shape, np.uint8))
    with pytest.raises(ImageError, match=r"the image is empty \(0x3 px\)"):
        load_image(Image.new("RGB", (0, 3)))
    with pytest.raises(ImageError, match=r"cannot make an image from an array of shape \(2, 2, 2\)"):
        load_image(np.zeros((2, 2, 2), np.uint8))


def test_the_loop_refuses_an_empty_array_cleanly():
    from perceive.loop import PerceptionLoop
    from perceive.testing.tiny import tiny_vpt_model

    with pytest.raises(ImageError, match="empty"):
        PerceptionLoop(tiny_vpt_model(branches=())).ask(np.zeros((0, 0, 3), np.uint8), "What?")


def _header_only_png(width, height):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_decompression_bombs_are_refused_with_the_limit_and_how_to_raise_it(tmp_path, monkeypatch):
    from perceive.images import check_image_file

    monkeypatch.delenv("PERCEIVE_MAX_IMAGE_PIXELS", raising=False)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_header_only_png(30000, 30000))  # 900 M pixels in 100 bytes
    for load in (load_image, check_image_file):
        with pytest.raises(ImageError) as e:
            load(bomb)
        assert str(e.value).startswith(f"image {bomb} is 900,000,000 pixels, over the limit of 89,478,485 pixels")
        assert "PERCEIVE_MAX_IMAGE_PIXELS=900000000" in e.value.hint
    with pytest.raises(ImageError, match="the image bytes is 900,000,000 pixels"):
        load_image(bomb.read_bytes())
    mid = tmp_path / "mid.png"  # over the limit, under Pillow's own error threshold
    mid.write_bytes(_header_only_png(10000, 10000))
    with pytest.raises(ImageError, match=r"is 10000x10000 = 100,000,000 pixels, over the limit of 89,478,485"):
        load_image(mid)
    # raising the limit lets it through (this one then fails for what it is: no pixel data)
    monkeypatch.setenv("PERCEIVE_MAX_IMAGE_PIXELS", "1000000000")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(bomb)
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    monkeypatch.setenv("PERCEIVE_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(ImageError, match=r"20x20 = 400 pixels, over the limit of 100 pixels"):
        load_image(small)
    assert load_image(small, max_pixels=None).size == (20, 20)
    monkeypatch.setenv("PERCEIVE_MAX_IMAGE_PIXELS", "0")
    assert load_image(small).size == (20, 20)
    monkeypatch.setenv("PERCEIVE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ImageError, match="PERCEIVE_MAX_IMAGE_PIXELS='lots' is not a number of pixels"):
        load_image(small)


def _card_8_and_16_bit(tmp_path):
    """The shipped example card in 8-bit greyscale, and its 16-bit copy (a 16-bit PNG)."""
    from perceive.defaults import default_examples, default_model_path

    if default_model_path() is None:
        pytest.skip("models/default is not in this checkout")
    path, number = next((p, n) for p, n in default_examples() if p.name == "card_1.png")
    gray = as_rgb(load_image(path)).convert("L")
    p16 = tmp_path / "card_1_16bit.png"
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(p16)
    return gray, load_image(p16), number


def test_16_bit_images_scale_to_8_bits(tmp_path):
    gray, sixteen, _ = _card_8_and_16_bit(tmp_path)
    assert sixteen.mode == "I;16"
    want = np.asarray(gray.convert("RGB")).astype(int)

    def diff(image):
        got = as_rgb(image)
        assert got.mode == "RGB"
        return np.abs(np.asarray(got).astype(int) - want).max()

    assert diff(sixteen) <= 1
    a = np.asarray(gray)
    assert diff(Image.fromarray(a.astype(np.int32) * 257)) <= 1  # mode I holding 16-bit values
    assert diff(Image.fromarray(a.astype(np.int32))) == 0  # mode I holding 8-bit values
    assert diff(Image.fromarray(a.astype(np.float32) / 255)) <= 1  # mode F in 0-1
    assert diff(Image.fromarray(a.astype(np.float32))) == 0  # mode F in 0-255
    assert diff(load_image(a.astype(np.uint16) * 257)) <= 1  # arrays too
    assert diff(load_image(np.stack([a.astype(np.uint16) * 257] * 3, axis=-1))) <= 1  # HxWx3 uint16
    assert diff(load_image(np.stack([a / 255] * 3, axis=-1))) <= 1  # HxWx3 float64 in 0-1
    # other ranges stretch from the minimum to the maximum
    f = as_rgb(Image.fromarray(np.array([[-1.0, 0.0, 3.0]], np.float32)))
    assert [f.getpixel((x, 0))[0] for x in range(3)] == [0, 64, 255]


def test_the_default_model_reads_a_16_bit_card_as_it_reads_the_8_bit_one(tmp_path):
    import perceive
    from perceive.defaults import default_model_path

    gray, sixteen, number = _card_8_and_16_bit(tmp_path)
    loop = perceive.PerceptionLoop(perceive.load_model(default_model_path()))
    question = "What number is written on the card?"
    assert loop.ask(gray, question).text == loop.ask(sixteen, question).text == number


def test_a_raised_or_disabled_limit_lets_check_image_file_past_pillows_own_guard(tmp_path, monkeypatch):
    """Over twice Pillow's limit (~179 M px) Pillow refuses by itself; our limit decides."""
    from perceive.images import check_image_file

    big = tmp_path / "big.png"
    big.write_bytes(_header_only_png(20000, 10000))  # 200 M pixels
    for raised in ("0", "500000000"):
        monkeypatch.setenv("PERCEIVE_MAX_IMAGE_PIXELS", raised)
        assert check_image_file(big) == (20000, 10000)
        with pytest.raises(ImageError, match="cannot read image") as e:  # no pixel data: not "too large"
            load_image(big)
        assert "pixels" not in str(e.value)
    assert check_image_file(big, max_pixels=None) == (20000, 10000)
    monkeypatch.setenv("PERCEIVE_MAX_IMAGE_PIXELS", "150000000")
    for load in (load_image, check_image_file):
        with pytest.raises(ImageError, match=r"is 200,000,000 pixels, over the limit of 150,000,000 pixels"):
            load(big)


def test_the_too_large_message_has_no_limit_to_show_when_there_is_none():
    from perceive.images import _too_large

    err = _too_large("image x.png", None, None, "Image size (200000000 pixels) exceeds limit of 178956970 pixels")
    assert str(err).startswith("image x.png is 200,000,000 pixels, over Pillow's own limit")
    assert "PERCEIVE_MAX_IMAGE_PIXELS=200000000" in err.hint


def test_loading_leaves_pillows_own_guard_as_it_was(tmp_path, monkeypatch):
    import PIL.Image

    from perceive.images import check_image_file

    before = PIL.Image.MAX_IMAGE_PIXELS
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    big.write_bytes(_header_only_png(20000, 10000))  # past Pillow's guard: it must be lifted for this one
    Image.new("RGB", (20, 20)).save(small)
    for raised in ("0", "500000000"):
        monkeypatch.setenv("PERCEIVE_MAX_IMAGE_PIXELS", raised)
        assert load_image(small).size == (20, 20)
        with pytest.raises(ImageError, match="cannot read image"):
            load_image(big)
        with pytest.raises(ImageError, match="cannot decode image bytes"):  # bytes are opened again too
            load_image(big.read_bytes())
        check_image_file(big)
        assert PIL.Image.MAX_IMAGE_PIXELS == before
    # and Pillow, for anyone else in the process, still refuses the bomb by itself
    with pytest.raises(PIL.Image.DecompressionBombError):
        PIL.Image.open(big)
