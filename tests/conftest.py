from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from perceive.plugins import load_registry, reset_registry

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

#: The suite loads only the plugins this repository ships (the entry points of the ``perceive``
#: distribution), so a stray or broken plugin installed in the venv cannot fail a test. Tests that
#: install fake distributions with :func:`make_dist` add them to this list; a test marked
#: ``@pytest.mark.all_plugins`` loads every installed plugin, as a user's machine would.
REFERENCE_DIST = "perceive"


@pytest.fixture(autouse=True)
def _hermetic_plugins(request, monkeypatch):
    """``PERCEIVE_PLUGINS=perceive`` for every test (and the processes it starts), unless it is
    marked ``all_plugins``; the other plugin switches unset; a fresh default registry."""
    for var in ("PERCEIVE_DISABLE_PLUGIN_AUTOLOAD", "PERCEIVE_PLUGINS", "PERCEIVE_TRACE_PLUGINS",
                "PERCEIVE_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    if request.node.get_closest_marker("all_plugins") is None:
        monkeypatch.setenv("PERCEIVE_PLUGINS", REFERENCE_DIST)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def registry(_hermetic_plugins):
    """A fresh registry: the reference plugins (every installed one under ``all_plugins``), and
    any distribution the test installed with :func:`make_dist`."""
    return load_registry(autoload=True)


def make_dist(site: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str], *,
              enable: bool = True) -> Path:
    """Write an installed-looking distribution into ``site`` (a folder on sys.path): its
    modules and a dist-info with ``perceive.plugins`` entry points. What pip would leave.

    ``enable``: the distribution joins the suite's ``PERCEIVE_PLUGINS`` (restored after the test),
    so registries load it beside the reference plugins; ``False`` leaves it installed but unseen,
    like a stray plugin in the venv."""
    if enable and os.environ.get("PERCEIVE_PLUGINS"):
        os.environ["PERCEIVE_PLUGINS"] += f",{dist}"  # the autouse monkeypatch restores it
    site.mkdir(parents=True, exist_ok=True)
    for name, code in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[perceive.plugins]\n{eps}\n")
    return site


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A folder on sys.path where tests install fake plugin distributions."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    for mod in [m for m, v in sys.modules.items() if str(site) in str(getattr(v, "__file__", ""))]:
        del sys.modules[mod]


@pytest.fixture(scope="module")
def model():
    """A tiny random-weight VPT model with every branch (module-scoped: build it once)."""
    from perceive.testing.tiny import tiny_vpt_model

    return tiny_vpt_model()


@pytest.fixture(scope="module")
def photo():
    from perceive.testing.images import real_photos

    return real_photos()["astronaut"]


# a registry with the test plugin of a text action, and a tiny VPT model whose tokenizer has its tokens
# (test_ocr, test_tokenizer_checks)
@pytest.fixture(scope="module")
def text_registry():
    from tests.plugins import textual

    return load_registry([("textual", textual)])


@pytest.fixture(scope="module")
def text_model(text_registry):
    from perceive.testing.tiny import build_tokenizer, tiny_vpt_model
    from tests.plugins import textual

    g = textual.Caption.grammar
    tok = build_tokenizer(branches=[], extra_tokens=[g.start, g.end], registry=text_registry)
    return tiny_vpt_model(branches=[], tokenizer=tok, registry=text_registry)
