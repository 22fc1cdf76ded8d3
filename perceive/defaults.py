"""The default model shipped with the repository, and its example images."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "default"
EXAMPLES_DIR = DEFAULT_MODEL_DIR / "examples"


def default_model_path() -> Path | None:
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "config.json").exists() else None


def default_examples() -> list[tuple[Path, str]]:
    """Shipped card images (held-out backgrounds) and the number each shows, in file order."""
    return [(EXAMPLES_DIR / name, ex["number"]) for name, ex in example_table().items()]


def example_table() -> dict[str, dict]:
    """``examples.json``: per image file, the number and the card's box (original pixels)."""
    return json.loads((EXAMPLES_DIR / "examples.json").read_text())
