"""Where the default model lives (shipped with the repository, once trained)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "default"


def default_model_path() -> Path | None:
    return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "config.json").exists() else None
