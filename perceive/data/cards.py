"""The number-card task: a white card with a three-digit number on a real photo.

Exact specification (so anyone can generate matching data):

* canvas 448x448 RGB; background: a random square crop (side uniform between half and all of
  the photo's shorter side) of a real photo, resized to 448x448 (bicubic);
* a card: white fill, 2 px black outline, width uniform in [40, 64] px, height round(0.6 * width),
  placed uniformly so that it lies fully inside the canvas;
* on it a three-digit number (000-999, uniform) in black, Pillow's bundled font
  ``ImageFont.load_default(size=round(0.55 * card height))``, centred;
* question "What number is written on the card?", answer the three digits;
* region-selection items carry the ground-truth grid cells (8x8 on the 448 canvas) as the
  assistant's region span, then the crop as the next image, then the answer. The crop is the
  cells grown by ``margin`` cells per side: 1 as in the paper (§1.2), 0 for the touched cells.

Backgrounds: scikit-image's bundled photos, split into a training set and a held-out set that
training never sees; or any folder of images. Three training-only options, off by default so that
the specification above stays exact: the ``train_wide`` split adds the remaining bundled photos
(cells, a scanned page, text, retinal microaneurysms), ``augment`` jitters each background before the card is drawn
(flips, quarter turns, greyscale, gamma, contrast), and ``distractors`` paints light card-sized
blobs under the card (hard negatives), so that bright background objects (coins, a clock face)
are seen in training as things that are not the card. A fourth, ``widths``, narrows the card's width
range inside [40, 64] to over-sample the small cards, whose digits are hardest to read.

One more option, off by default and allowed on every split (the held-out set included: it changes the
card's size, never its background): ``large_share`` makes that share of the cards **large**, each
card independently (a seeded coin, drawn only when the share is above 0, so that sets made without it
are unchanged), with its width uniform in ``large_widths`` (default [240, 320]) and everything else
as specified (height 0.6 * width, digits 0.55 * height, the 2 px outline). Each card's size class
(:class:`CardSize`) is in ``cards.json`` and in every item (``card_size``), so that results can be
broken down by it. Why 240-320: the first view of ``models/default`` is the 448 canvas at 112x112, a
quarter scale. A digit's ink is about 0.73 of the font size, so 0.73 * 0.55 * 0.6 * w = 0.24 w canvas
px tall, 0.06 w px in the first view: 2.4-3.8 px for the specification's 40-64 px cards (unreadable),
14.4-19.2 px for 240-320 px (measured: 14-19), i.e. at least one 14 px patch of the vision tower per
digit, the smallest unit the model sees. (In its 3x crops the model reads digits 27-45 px tall; the
canvas caps a first-view digit at about 27 px, w = 448.) At 320 px the card still has 128 px of
horizontal and 256 px of vertical room to be placed in.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from perceive.data.dataset import DatasetError
from perceive.geometry import Box, box_to_grid_cells, grid_cells_to_box
from perceive.images import rescale
from perceive.vocabulary import REGION_END, REGION_START, Vocabulary

CANVAS = 448
GRID = 8
QUESTION = "What number is written on the card?"
REGION_PROMPT = "Identify the region that can help you answer the question, and then answer the question."
REENCODE_PROMPT = "Require additional perception features, and then answer the question."
#: the re-encode branch whose tokens and placeholder ``reencode.json`` uses (the recipes in
#: recipes/cards add this branch); any installed branch can be asked for instead
REENCODE_BRANCH = "dino"
# scikit-image photos: the evaluation backgrounds are never used in training
TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea", "immunohistochemistry", "retina", "hubble_deep_field", "camera",
                "brick", "grass", "moon")
EVAL_PHOTOS = ("rocket", "coins", "clock", "gravel")
# the other bundled photos (not the synthetic images); training-only, never the held-out set
WIDE_PHOTOS = TRAIN_PHOTOS + ("cell", "page", "text", "microaneurysms")
SPLITS = ("train", "train_wide", "eval", "flat")
WIDTHS = (40, 64)  # the card's width range in px (the specification)
#: the large cards' default width range in px: digits 14-19 px tall in a 112x112 first view (module docstring)
LARGE_WIDTHS = (240, 320)


class CardSize(str, Enum):
    """A card's size class: ``small`` is the specification's card (40-64 px wide, unreadable in a
    112x112 first view), ``large`` one drawn from the large-card width range (readable there)."""

    SMALL = "small"
    LARGE = "large"


def check_large_cards(share: float, widths: tuple[int, int]) -> tuple[int, int]:
    """``widths`` as a tuple, once ``share`` is a share (0 to 1) and ``widths`` a range LO HI of
    large-card widths in canvas px: wider than the specification's cards, at most the 448 canvas.
    Raises :class:`DatasetError` saying which and what to pass."""
    if not 0.0 <= share <= 1.0:
        raise DatasetError(f"the share of large cards must be between 0 and 1, got {share}",
                           hint="e.g. --large-cards 0.5 for half the cards")
    widths = tuple(widths)
    if not (len(widths) == 2 and WIDTHS[1] < widths[0] <= widths[1] <= CANVAS):
        raise DatasetError(f"large card widths {widths} must be a range LO HI above {WIDTHS[1]} and at most "
                           f"{CANVAS} px (the canvas)",
                           hint=f"e.g. --large-card-widths {LARGE_WIDTHS[0]} {LARGE_WIDTHS[1]}")
    return widths


def card_width(rng: random.Random, widths: tuple[int, int] = WIDTHS, large_share: float = 0.0,
               large_widths: tuple[int, int] = LARGE_WIDTHS) -> tuple[int, CardSize]:
    """A card's width in canvas px and its size class: large with probability ``large_share``. The
    size coin is drawn only when the share is above 0, so a set made without large cards draws
    exactly the numbers it drew before the option existed."""
    if large_share > 0 and rng.random() < large_share:
        return rng.randint(*large_widths), CardSize.LARGE
    return rng.randint(*widths), CardSize.SMALL


def skimage_photos(names) -> dict[str, Image.Image]:
    from skimage import data

    return {n: Image.fromarray(getattr(data, n)()).convert("RGB") for n in names}


def flat_photos(n: int = 8) -> dict[str, Image.Image]:
    """``n`` single-colour backgrounds, each channel in [40, 160] (darker than the white card):
    the card is then the only thing in the image, a first stage for learning to localise it."""
    rng = random.Random(0)
    return {f"flat{i}": Image.new("RGB", (512, 512), tuple(rng.randint(40, 160) for _ in range(3)))
            for i in range(n)}


def folder_photos(path: str | Path) -> dict[str, Image.Image]:
    """The RGB photos in the folder ``path``, by file stem, read by :func:`perceive.images.load_image`:
    upright by their EXIF orientation, so a card's box is in the background as it is shown."""
    from perceive.images import as_rgb, load_image

    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"the backgrounds folder {path} " + ("is a file" if path.exists() else "does not exist"),
                           hint="pass a folder of background photos (.png, .jpg, .webp, .bmp)")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
    if not files:
        raise DatasetError(f"no images in the backgrounds folder {path}",
                           hint="it needs .png, .jpg, .jpeg, .webp or .bmp photos")
    return {p.stem: as_rgb(load_image(p)) for p in files}


def output_folder(out: str | Path) -> Path:
    """``out`` as a folder to write a set into: created when missing; a file there is an error."""
    out = Path(out)
    if not str(out).strip():
        raise DatasetError("the output folder is empty", hint="pass --out DIR")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"the output {out} is a file; a set is written into a folder (images/ and .json files)",
                           hint="pass the path of a new or existing folder")
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the output folder {out}: {exc.strerror or exc}",
                           hint="pass a folder you can write to (every part of the path a folder)") from None
    return out


@dataclass
class Card:
    number: str
    box: tuple[int, int, int, int]  # the card, in canvas pixels
    xs: list[int]  # grid columns the card touches
    ys: list[int]
    crop: tuple[int, int, int, int]  # the region the span selects (cells +- margin, §1.2)
    background: str
    card_size: CardSize = CardSize.SMALL


def jitter_background(rng: random.Random, img: Image.Image) -> Image.Image:
    """A random photometric and geometric change of a background (RGB in, RGB out, same size):
    a flip and a quarter turn, greyscale with probability 1/2, then gamma in [0.4, 2.5] (below 1
    brightens: many near-white areas) and contrast in [0.6, 1.6]."""
    from PIL import ImageEnhance, ImageOps

    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = img.rotate(90 * rng.randint(0, 3))
    if rng.random() < 0.5:
        img = ImageOps.grayscale(img).convert("RGB")
    gamma = rng.uniform(0.4, 2.5)
    img = img.point([round(255 * (v / 255) ** gamma) for v in range(256)] * 3)
    return ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.6))


def paste_distractors(rng: random.Random, img: Image.Image) -> Image.Image:
    """Paint 1-6 light blobs, each 24-80 px, on a 448x448 background (RGB): ellipses or plain
    rectangles, flat grey-white (170-245) or textured (a brightened piece of the image itself),
    some with a dark rim. None is a white card with a black outline and digits: the card drawn
    afterwards stays the only one."""
    from PIL import ImageChops

    img = img.copy()
    for _ in range(rng.randint(1, 6)):
        w, h = rng.randint(24, 80), rng.randint(24, 80)
        x, y = rng.randint(0, CANVAS - w), rng.randint(0, CANVAS - h)
        mask = Image.new("L", (w, h), 0)
        shape = ImageDraw.Draw(mask)
        ellipse = rng.random() < 0.6
        (shape.ellipse if ellipse else shape.rectangle)([0, 0, w - 1, h - 1], fill=255)
        if rng.random() < 0.5:
            patch = Image.new("RGB", (w, h), (rng.randint(170, 245),) * 3)
        else:
            sx, sy = rng.randint(0, CANVAS - w), rng.randint(0, CANVAS - h)
            piece = img.crop((sx, sy, sx + w, sy + h))
            patch = ImageChops.screen(piece, piece)  # brighter, texture kept
        img.paste(patch, (x, y), mask)
        if ellipse and rng.random() < 0.5:
            ImageDraw.Draw(img).ellipse([x, y, x + w - 1, y + h - 1], outline=(rng.randint(0, 90),) * 3, width=2)
    return img


def make_card(rng: random.Random, photos: dict[str, Image.Image], margin: int = 1,
              augment: bool = False, distractors: bool = False,
              widths: tuple[int, int] = WIDTHS, large_share: float = 0.0,
              large_widths: tuple[int, int] = LARGE_WIDTHS) -> tuple[Image.Image, Card]:
    """A 448x448 RGB canvas with one card on it, and the card's ground truth (canvas px). The card
    is large with probability ``large_share`` (width in ``large_widths``), else its width is in
    ``widths``; its digits scale with it."""
    name = rng.choice(sorted(photos))
    photo = photos[name]
    short = min(photo.size)
    side = rng.randint((short + 1) // 2, short)
    x = rng.randint(0, photo.width - side)
    y = rng.randint(0, photo.height - side)
    canvas = photo.crop((x, y, x + side, y + side)).resize((CANVAS, CANVAS), Image.Resampling.BICUBIC)
    if augment:
        canvas = jitter_background(rng, canvas)
    if distractors:
        canvas = paste_distractors(rng, canvas)
    w, size = card_width(rng, widths, large_share, large_widths)
    h = round(0.6 * w)
    x0 = rng.randint(0, CANVAS - w)
    y0 = rng.randint(0, CANVAS - h)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill="white", outline="black", width=2)
    number = f"{rng.randint(0, 999):03d}"
    font = ImageFont.load_default(size=round(0.55 * h))
    draw.text((x0 + w / 2, y0 + h / 2), number, fill="black", font=font, anchor="mm")
    box = Box(x0, y0, x0 + w, y0 + h)
    xs, ys = box_to_grid_cells(box, CANVAS, CANVAS, grid=GRID)
    crop = grid_cells_to_box(set(xs), set(ys), CANVAS, CANVAS, grid=GRID, margin=margin)
    return canvas, Card(number, box.as_int_tuple(), xs, ys, crop.as_int_tuple(), name, size)


def region_span(card: Card, grid: int = GRID) -> str:
    """The paper's layout: start, x_min, y_min, x_max, y_max, end."""
    v = Vocabulary(grid)
    return REGION_START + v.x(min(card.xs)) + v.y(min(card.ys)) + v.x(max(card.xs)) + v.y(max(card.ys)) + REGION_END


def reencode_branch(name: str):
    """The installed re-encode branch ``name`` (a :class:`~perceive.BranchSpec`), whose span,
    placeholder and images key re-encode items use. Raises
    :class:`~perceive.errors.UnknownActionError` naming the branches there are: for an action that
    gives views or text (it has no branch), or a name nothing registers (with a did-you-mean)."""
    from perceive.errors import UnknownActionError
    from perceive.plugins import get_registry

    reg = get_registry()
    action = reg.actions.get(name)
    if name not in reg.branches and action is not None:
        gives = {"view": "views"}.get(action.obj.observation, action.obj.observation)
        raise UnknownActionError(f"action {name!r} gives {gives}, not features: re-encode items need a features "
                                 "action with a model branch",
                                 hint=f"use one of {', '.join(sorted(reg.branches)) or '(none installed)'}")
    return reg.branch(name)


def items_for(path: str, card: Card, prompts: bool = True, reencode: str = REENCODE_BRANCH) -> dict[str, dict]:
    """The dataset items of one image, in the paper's layout (§3.2), one per variant. With
    ``prompts`` the region and re-encode questions end with the paper's instruction to use the
    token; without, the bare question (the model decides to look closer by itself). ``reencode``:
    the installed re-encode branch whose span and placeholder the re-encode item uses. Every item
    also names its card's size class (``card_size``: ``small`` or ``large``), an extra key the
    dataset reader keeps and ``perceive eval`` copies into its records."""
    branch = reencode_branch(reencode)
    crop = ",".join(str(v) for v in card.crop)
    region_q = f"{QUESTION} \n{REGION_PROMPT}" if prompts else QUESTION
    reencode_q = f"{QUESTION} \n{REENCODE_PROMPT}" if prompts else QUESTION
    region = {"messages": [{"role": "user", "content": f"<image>{region_q}"},
                           {"role": "assistant", "content": region_span(card)},
                           {"role": "user", "content": "<image>"},
                           {"role": "assistant", "content": card.number}],
              "images": [path, f"{path}_{crop}"]}
    items = {
        "plain": {"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                               {"role": "assistant", "content": card.number}],
                  "images": [path]},
        "region": region,
        # localisation alone: the region item's first turn (a stage of its own)
        "locate": {"messages": region["messages"][:2], "images": region["images"][:1]},
        # curriculum, easiest first: the card alone, then the selected region; reading can be
        # learned before localising
        "read_card": {"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                                   {"role": "assistant", "content": card.number}],
                      "images": [f"{path}_{','.join(str(v) for v in card.box)}"]},
        "read": {"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                              {"role": "assistant", "content": card.number}],
                 "images": [f"{path}_{crop}"]},
        "reencode": {"messages": [{"role": "user", "content": f"<image>{reencode_q}"},
                                  {"role": "assistant", "content": "".join(branch.tokens.span)},
                                  {"role": "user", "content": branch.message_placeholder},
                                  {"role": "assistant", "content": card.number}],
                     "images": [path], branch.images_key: [path]},
    }
    for item in items.values():
        item["card_size"] = card.card_size.value
    return items


def photos_for(split: str) -> dict[str, Image.Image]:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    if split == "flat":
        return flat_photos()
    return skimage_photos({"train": TRAIN_PHOTOS, "train_wide": WIDE_PHOTOS, "eval": EVAL_PHOTOS}[split])


def generate(out: str | Path, n: int, seed: int = 0, backgrounds: str | Path | None = None,
             split: str = "train", progress=None, fmt: str = "png", margin: int = 1, prompts: bool = True,
             augment: bool = False, distractors: bool = False, widths: tuple[int, int] = WIDTHS,
             reencode: str = REENCODE_BRANCH, large_share: float = 0.0,
             large_widths: tuple[int, int] = LARGE_WIDTHS) -> Path:
    """Write ``n`` card images and the datasets into ``out``: ``plain.json``, ``region.json``,
    ``locate.json`` (the region span alone), ``read_card.json`` and ``read.json`` (the card alone,
    then the selected crop alone: a reading curriculum), ``reencode.json``, and ``cards.json``
    (ground truth: number, card box, cells, crop, size class). ``widths``: the card's width range in
    px, a training-only narrowing of [40, 64]. ``reencode``: the re-encode branch ``reencode.json``
    uses. ``large_share``: the probability that a card is large, its width then in ``large_widths``
    (any split; see the module docstring for the default range)."""
    large_widths = check_large_cards(large_share, large_widths)
    widths = tuple(widths)
    if not (len(widths) == 2 and WIDTHS[0] <= widths[0] <= widths[1] <= WIDTHS[1]):
        raise DatasetError(f"card widths {widths} must be a range LO HI inside {WIDTHS[0]}-{WIDTHS[1]} px",
                           hint=f"e.g. --card-widths {WIDTHS[0]} 52")
    if (augment or distractors or widths != WIDTHS) and split == "eval":
        raise DatasetError("augment, distractors and card widths are for training data; the held-out set follows "
                           "the specification exactly", hint="drop those options, or use a training split")
    if fmt not in ("png", "jpg"):
        raise DatasetError(f"unknown image format {fmt!r}", hint="use png or jpg")
    if n < 1:
        raise DatasetError(f"the number of images must be at least 1, got {n}")
    if backgrounds is None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    reencode_branch(reencode)  # before anything is written
    out = output_folder(out)
    photos = folder_photos(backgrounds) if backgrounds else photos_for(split)
    rng = random.Random(seed)
    sets: dict[str, list] = {"plain": [], "region": [], "locate": [], "read_card": [], "read": [],
                             "reencode": []}
    cards = []
    for i in range(n):
        img, card = make_card(rng, photos, margin, augment, distractors, widths, large_share, large_widths)
        rel = f"images/{i:06d}.{fmt}"
        # fast PNG compression; JPEG (quality 95) for training-scale sets, 4x smaller
        img.save(out / rel, **({"compress_level": 1} if fmt == "png" else {"quality": 95}))
        for k, item in items_for(rel, card, prompts, reencode).items():
            sets[k].append(item)
        cards.append({**asdict(card), "card_size": card.card_size.value})
        if progress:
            progress(i + 1)
    for k, items in sets.items():
        (out / f"{k}.json").write_text(json.dumps(items, indent=1))
    meta = {"n": n, "seed": seed, "canvas": CANVAS, "grid": GRID, "margin": margin, "prompts": prompts, "split": split,
            "augment": augment, "distractors": distractors, "widths": list(widths),
            "large_share": large_share, "large_widths": list(large_widths),
            "backgrounds": str(backgrounds) if backgrounds else sorted(photos)}
    (out / "cards.json").write_text(json.dumps({"meta": meta, "cards": cards}, indent=1))
    return out


def reading_set(out: str | Path, n: int, seed: int = 0, split: str = "train", context: int | None = None,
                scale: float = 3.0, backgrounds: str | Path | None = None, progress=None) -> Path:
    """A reading curriculum: ``n`` crops around the card, each resized by ``scale`` (bicubic) and
    saved as its own JPEG (quality 95), with question and answer (``read.json``).

    ``context=J`` crops the card plus a uniform 0..J px of its surroundings per side (J=0: the
    card alone); ``context=None`` crops the grid cells the card touches, which is what a
    margin-0 Region Selection shows. Cards are drawn exactly as :func:`make_card` draws them.
    """
    if n < 1:
        raise DatasetError(f"the number of crops must be at least 1, got {n}")
    if scale <= 0:
        raise DatasetError(f"the scale must be above 0, got {scale}")
    if backgrounds is None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    out = output_folder(out)
    photos = folder_photos(backgrounds) if backgrounds else photos_for(split)
    rng = random.Random(seed)
    items = []
    for i in range(n):
        img, card = make_card(rng, photos, margin=0)
        if context is None:
            box = card.crop
        else:
            x0, y0, x1, y1 = card.box
            box = (max(0, x0 - rng.randint(0, context)), max(0, y0 - rng.randint(0, context)),
                   min(CANVAS, x1 + rng.randint(0, context)), min(CANVAS, y1 + rng.randint(0, context)))
        crop = rescale(img.crop(box), scale)
        rel = f"images/{i:06d}.jpg"
        crop.save(out / rel, quality=95)
        items.append({"messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                                   {"role": "assistant", "content": card.number}], "images": [rel]})
        if progress:
            progress(i + 1)
    (out / "read.json").write_text(json.dumps(items))
    return out

