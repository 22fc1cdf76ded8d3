"""Datasets in the paper's released layout (vpt-paper.md §3.2).

A JSON list of items ``{"messages": [...], "images": [...], "<branch key>": [...], ...}``; message
text holds placeholders ``<image>`` and each installed re-encode branch's own (its
``BranchSpec.placeholder``, listed under its ``dataset_key``) consumed in order from those lists.
An image path may end in ``_x0,y0,x1,y1`` after its extension: the crop of that box (§1.3).

Items that do not fit (a placeholder without an image, an image without a placeholder, a grid
token out of range such as ``<|x_8|>``, a missing or unreadable file, a malformed crop, turns out
of order) are reported with their index and skipped, or the whole set is rejected
(``policy="reject"``). Nothing is silently mis-trained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from perceive.errors import PerceiveError
from perceive.images import as_rgb, load_image
from perceive.vocabulary import GRID_TOKEN_RE


def placeholders(registry=None) -> dict[str, str]:
    """Item key -> message placeholder: ``images`` -> ``<image>``, then each installed re-encode
    branch's (:attr:`perceive.BranchSpec.dataset_key` -> its placeholder)."""
    from perceive.plugins import get_registry

    out = {"images": "<image>"}
    for spec in (registry or get_registry()).branch_specs().values():
        out.setdefault(spec.images_key, spec.message_placeholder)
    return out

_CROP = re.compile(r"^(?P<path>.*\.[^._/]+)_(?P<box>-?\d+,-?\d+,-?\d+,-?\d+)$")


class DatasetError(PerceiveError, ValueError):
    pass


@dataclass
class ItemIssue:
    index: int
    message: str

    def __str__(self) -> str:
        return f"item {self.index}: {self.message}"


def split_crop(ref: str) -> tuple[str, tuple[int, int, int, int] | None]:
    """``"a.jpg_0,0,10,10"`` -> ``("a.jpg", (0, 0, 10, 10))``; a plain path -> ``(path, None)``."""
    m = _CROP.match(ref)
    if not m:
        return ref, None
    x0, y0, x1, y1 = (int(v) for v in m.group("box").split(","))
    return m.group("path"), (x0, y0, x1, y1)


def load_ref(ref: str, root: Path, decoded: dict[str, Image.Image] | None = None) -> Image.Image:
    """The RGB image an item refers to, cropped when the path carries a box. ``decoded`` caches
    files by path, so an image and its crops are decoded once."""
    path, box = split_crop(ref)
    p = Path(path) if Path(path).is_absolute() else root / path
    if decoded is not None and path in decoded:
        image = decoded[path]
    else:
        image = as_rgb(load_image(p))
        if decoded is not None:
            decoded[path] = image
    if box is not None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height):
            raise DatasetError(f"crop {box} is outside the {image.width}x{image.height} image {path}")
        image = image.crop(box)
    return image


@dataclass
class Example:
    index: int
    messages: list[dict[str, str]]
    images: dict[str, list[Image.Image]] = field(default_factory=dict)
    refs: dict[str, list[str]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        return self.messages[0]["content"]

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


class VPTDataset:
    """Items of a paper-layout JSON file, validated up front. Images load lazily."""

    def __init__(self, path: str | Path, root: str | Path | None = None, policy: str = "skip", grid: int = 8,
                 check_files: bool = True):
        self.path = Path(path)
        self.root = Path(root) if root else self.path.parent
        try:
            raw = json.loads(self.path.read_text())
        except UnicodeDecodeError:
            raise DatasetError(f"cannot read dataset {self.path}: not a JSON text file (the paper's layout is a JSON "
                               f"list of items)", hint="a benchmark's parquet or arrow file is read by perceive eval "
                               "--benchmark NAME (perceive eval benchmarks lists them)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read dataset {self.path}: {exc}") from exc
        if not isinstance(raw, list):
            raise DatasetError(f"{self.path}: expected a JSON list of items")
        self.grid = grid
        self.placeholders = placeholders()
        self.issues: list[ItemIssue] = []
        self.items: list[tuple[int, dict]] = []
        for i, item in enumerate(raw):
            problems = self._check(item, check_files)
            self.issues += [ItemIssue(i, p) for p in problems]
            if not problems:
                self.items.append((i, item))
        if self.issues and policy == "reject":
            shown = "\n".join(str(x) for x in self.issues[:20])
            raise DatasetError(f"{self.path}: {len(self.issues)} problem(s) in {len(raw)} items:\n{shown}",
                               hint="fix the items, or use policy 'skip' to leave them out")

    def _check(self, item: Any, check_files: bool) -> list[str]:
        if not isinstance(item, dict) or not isinstance(item.get("messages"), list):
            return ["not an object with a 'messages' list"]
        problems = []
        msgs = item["messages"]
        roles = [m.get("role") for m in msgs if isinstance(m, dict)]
        if len(roles) != len(msgs) or not msgs:
            return ["messages must be objects with 'role' and 'content'"]
        if roles[0] == "system":
            roles = roles[1:]
        if len(roles) % 2 or any(r != ("user" if k % 2 == 0 else "assistant") for k, r in enumerate(roles)):
            problems.append(f"turns must alternate user/assistant and end with the assistant, got {roles}")
        text = "".join(str(m.get("content", "")) for m in msgs)
        for key, ph in self.placeholders.items():
            n_ph, n_img = text.count(ph), len(item.get(key) or [])
            if n_ph != n_img:
                problems.append(f"{n_ph} {ph} placeholder(s) but {n_img} entries in '{key}'")
        for m in GRID_TOKEN_RE.finditer(text):
            if int(m.group(2)) >= self.grid:
                problems.append(f"grid token {m.group(0)} is outside the {self.grid}x{self.grid} grid")
        if check_files:
            for key in self.placeholders:
                for ref in item.get(key) or []:
                    path, box = split_crop(str(ref))
                    p = Path(path) if Path(path).is_absolute() else self.root / path
                    if not p.exists():
                        problems.append(f"missing file {path}")
                    elif box is not None and not (box[0] < box[2] and box[1] < box[3]):
                        problems.append(f"empty crop {box} in {ref}")
        return problems

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Example:
        index, item = self.items[k]
        refs = {key: [str(r) for r in item.get(key) or []] for key in self.placeholders}
        decoded: dict[str, Image.Image] = {}
        images = {key: [load_ref(r, self.root, decoded) for r in rs] for key, rs in refs.items() if rs}
        return Example(index, item["messages"], images, refs, item)

    def report(self) -> str:
        return "\n".join(str(i) for i in self.issues)
