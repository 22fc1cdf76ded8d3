"""Mixing datasets: curriculum stages keep a share of the earlier stages' items."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from perceive.data.dataset import DatasetError, placeholders

PART_HINT = "write FILE or FILE:COUNT, e.g. region.json or region.json:500 (a random 500 of its items)"


def parse_part(part: str) -> tuple[Path, int | None]:
    """``"FILE"`` -> ``(FILE, None)``; ``"FILE:COUNT"`` -> ``(FILE, COUNT)``. A COUNT that is not
    a whole number is a :class:`~perceive.data.dataset.DatasetError` (a file whose own name has
    a colon is taken whole when it exists)."""
    if not part.strip():
        raise DatasetError("a dataset part is empty", hint=PART_HINT)
    path, sep, count = part.rpartition(":")
    if not sep or Path(part).exists():
        return Path(part), None
    if not count.strip().isdigit():
        raise DatasetError(f"bad dataset part {part!r}: the COUNT after ':' must be a whole number of items, "
                           f"got {count!r}", hint=PART_HINT)
    if not path.strip():
        raise DatasetError(f"bad dataset part {part!r}: no file before ':'", hint=PART_HINT)
    return Path(path), int(count)


def _read_part(path: Path) -> list[dict]:
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}", hint="check the path of each part")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder; a part is a dataset .json file",
                           hint="name the .json file inside it, e.g. region.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc}", hint="a part is a JSON list of items") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
    for i, it in enumerate(data):
        if not isinstance(it, dict):
            raise DatasetError(f"{path}: item {i} is not an object", hint="each item is {\"messages\": [...], ...}")
        for key in placeholders():
            refs = it.get(key)
            if refs is not None and not (isinstance(refs, list) and all(isinstance(r, str) for r in refs)):
                raise DatasetError(f"{path}: item {i}: '{key}' must be a list of image paths")
    return data


def mix(out: str | Path, parts: list[tuple[str | Path, int | None]], seed: int = 0) -> Path:
    """One dataset file from several: ``(json file, how many items or None for all)``, sampled
    and shuffled with ``seed``; image paths are rewritten relative to ``out``'s folder."""
    out = Path(out)
    if out.is_dir():
        raise DatasetError(f"the output {out} is a folder; mix writes one dataset .json file",
                           hint=f"e.g. {out / 'mix.json'}")
    rng = random.Random(seed)
    items = []
    for path, k in parts:
        path = Path(path)
        part = _read_part(path)
        if k is not None and not 0 <= k <= len(part):
            raise DatasetError(f"cannot take {k} items from {path}: it has {len(part)}",
                               hint=f"ask for at most {len(part)}, or give the file alone for all of them")
        rel = Path(os.path.relpath(path.parent, out.parent))
        part = part if k is None else rng.sample(part, k)
        for it in part:
            it = dict(it)
            for key in placeholders():
                if key in it:
                    it[key] = [str(rel / p) for p in it[key]]
            items.append(it)
    rng.shuffle(items)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(items))
    return out
