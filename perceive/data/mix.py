"""Mixing datasets: curriculum stages keep a share of the earlier stages' items."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path


def mix(out: str | Path, parts: list[tuple[str | Path, int | None]], seed: int = 0) -> Path:
    """One dataset file from several: ``(json file, how many items or None for all)``, sampled
    and shuffled with ``seed``; image paths are rewritten relative to ``out``'s folder."""
    out = Path(out)
    rng = random.Random(seed)
    items = []
    for path, k in parts:
        path = Path(path)
        rel = Path(os.path.relpath(path.parent, out.parent))
        part = json.loads(path.read_text())
        part = part if k is None else rng.sample(part, k)
        for it in part:
            it = dict(it)
            for key in ("images", "detection_images", "seg_images", "clip_images"):
                if key in it:
                    it[key] = [str(rel / p) for p in it[key]]
            items.append(it)
    rng.shuffle(items)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(items))
    return out
