"""Every ```python block in README.md and docs/**/*.md runs as written, or says why it cannot.

A block runs as a module of its own, in a fresh temporary folder whose ``models/`` links to the
shipped models, unless the HTML comment on the line right above its fence says otherwise:

    <!-- docs-test: not-runnable: REASON -->     not run; the REASON is required
    <!-- docs-test: run-by=tests/test_x.py -->     another test runs it (that file must name the page)
    <!-- docs-test: setup=photo,run-yaml -->      fixtures first (SETUPS): files it opens, names it uses
    <!-- docs-test: continues -->                 in the namespace of the page's previous block
    <!-- docs-test: module=perceive_x -->          the block is the file perceive_x.py, imported
    <!-- docs-test: installed=perceive_x -->       that file installed first, as the distribution perceive-x
    <!-- docs-test: then=registers -->            a check after it ran (THEN)

Directives combine, separated by spaces. An unmarked block that fails fails the test with its
page and line; so does a marker this module cannot read.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "models" / "default" / "examples" / "card_0.png"
FENCE = "```python"
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
LOOSE = re.compile(r"<!--[^>]*(docs-test|not-runnable)")  # a marker someone meant to write
KEYS = {"setup", "run-by", "module", "installed", "then"}
FLAGS = {"continues"}


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page.name


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    code: str
    marker: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


class MarkerError(ValueError):
    pass


def parse_marker(text: str) -> dict[str, Any]:
    """The directives of one ``<!-- docs-test: ... -->`` comment."""
    if text.startswith("not-runnable"):
        reason = text[len("not-runnable"):].lstrip(":").strip()
        if not reason:
            raise MarkerError("not-runnable needs a reason: <!-- docs-test: not-runnable: REASON -->")
        return {"not-runnable": reason}
    out: dict[str, Any] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not eq and key in FLAGS:
            out[key] = True
        elif eq and key in KEYS and value:
            out[key] = value.split(",") if key in ("setup", "then") else value
        else:
            raise MarkerError(f"unknown directive {word!r}: use not-runnable: REASON, {', '.join(sorted(FLAGS))} "
                              f"or {'/'.join(sorted(KEYS))}=VALUE")
    return out


def blocks_of(text: str, page: str) -> tuple[list[Block], list[str]]:
    """The page's python blocks with their markers, and the problems of its markers."""
    lines = text.split("\n")
    blocks, problems, used = [], [], set()
    k = 0
    while k < len(lines):
        if lines[k].strip() != FENCE:
            k += 1
            continue
        end = next((j for j in range(k + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        block = Block(page, k + 1, textwrap.dedent("\n".join(lines[k + 1:end])) + "\n")
        above = next((j for j in range(k - 1, -1, -1) if lines[j].strip()), None)
        m = MARKER.match(lines[above]) if above is not None else None
        if m:
            used.add(above)
            try:
                block.marker = parse_marker(m.group(1))
            except MarkerError as exc:
                problems.append(f"{block.where}: {exc}")
        blocks.append(block)
        k = end + 1
    for j, line in enumerate(lines):
        if j not in used and LOOSE.search(line):
            problems.append(f"{page}:{j + 1}: a docs-test marker must be `<!-- docs-test: ... -->` on the line right "
                            "above a ```python fence")
    return blocks, problems


# -- what a block may ask for -------------------------------------------------------------


@dataclass
class Ctx:
    """One page's run: its folder (the working directory), a site folder on ``sys.path`` where
    ``module=`` blocks are written and ``installed=`` distributions go, and the test's fixtures."""

    cwd: Path
    request: Any
    monkeypatch: Any
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def site(self) -> Path:
        if "site" not in self.cache:
            self.cache["site"] = self.request.getfixturevalue("fake_site")  # on sys.path, cleaned up after
        return self.cache["site"]

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


def _photo(ctx: Ctx) -> dict:
    """``photo.jpg``: a number card on a real photo (the shipped model's example)."""
    from PIL import Image

    Image.open(CARD).convert("RGB").save(ctx.cwd / "photo.jpg", quality=95)
    return {}


def _run_yaml(ctx: Ctx) -> dict:
    """``run.yaml``: the shipped default model, one hop."""
    (ctx.cwd / "run.yaml").write_text("model: models/default\nruntime: {max_hops: 1, max_new_tokens: 16}\n")
    return {}


def _default_model(ctx: Ctx) -> dict:
    """``perceive``, ``model`` (the shipped default model) and ``image`` (a card photo, PIL)."""
    from PIL import Image

    import perceive

    model = ctx.once("default-model", lambda: perceive.load_model(ROOT / "models" / "default"))
    return {"perceive": perceive, "model": model, "image": Image.open(CARD).convert("RGB")}


def _answer(ctx: Ctx) -> dict:
    """``answer``: the default model's answer about a card, with its hop."""
    import perceive

    ns = _default_model(ctx)
    return {"answer": perceive.PerceptionLoop(ns["model"]).ask(ns["image"], "What number is written on the card?")}


def _scaffold(ctx: Ctx) -> Path:
    from perceive.scaffold import new_plugin

    return ctx.once("quadrant", lambda: new_plugin("quadrant", ctx.cwd / "scaffold") / "src" / "perceive_quadrant")


def _quadrant(ctx: Ctx) -> dict:
    """The names of the plugin ``perceive plugins new quadrant`` writes (``Quadrant``,
    ``QuadrantArgs``, ``Action``, ``Box``, ``hookimpl``, pydantic's ``BaseModel``, ...)."""
    return _namespace(_load(_scaffold(ctx) / "__init__.py", "docs_quadrant", ctx))


def _quadrant_installed(ctx: Ctx) -> dict:
    """That plugin installed, as ``pip install -e perceive-quadrant`` leaves it."""
    _install(ctx, "perceive_quadrant", (_scaffold(ctx) / "__init__.py").read_text())
    return {}


def _sobel(ctx: Ctx) -> dict:
    """The names of the Sobel features plugin (tests/plugins/sobel.py), ``SobelBranch`` among them."""
    return _namespace(_load(ROOT / "tests" / "plugins" / "sobel.py", "docs_sobel", ctx))


def _protocol(ctx: Ctx) -> dict:
    """``MyFamilyProtocol``: a protocol of its own name (a Hermes-style one) and ``hookimpl``."""
    from perceive import hookimpl
    from perceive.protocols.hermes import HermesJSON

    return {"MyFamilyProtocol": type("MyFamilyProtocol", (HermesJSON,), {"name": "my_family"}), "hookimpl": hookimpl}


def _sobel_model(ctx: Ctx) -> dict:
    """``runs/sobel/model``: a tiny random model carrying the installed ``sobel`` branch."""
    from perceive.model import save_model
    from perceive.testing.tiny import tiny_vpt_model

    save_model(tiny_vpt_model(branches=["sobel"]), ctx.cwd / "runs" / "sobel" / "model")
    return {}


SETUPS: dict[str, Callable[[Ctx], dict]] = {
    "photo": _photo, "run-yaml": _run_yaml, "default-model": _default_model, "answer": _answer,
    "quadrant": _quadrant, "quadrant-installed": _quadrant_installed, "sobel": _sobel, "protocol": _protocol,
    "sobel-model": _sobel_model,
}


def _registers(ctx: Ctx, module: types.ModuleType) -> None:
    """The block's hooks register cleanly beside the reference plugins."""
    from perceive.plugins import load_registry

    reg = load_registry([("docs_block", module)], only=["perceive"])
    assert not reg.broken, [(p.name, p.errors) for p in reg.broken]
    assert "docs_block" in reg.plugins


def _pytest_tests(ctx: Ctx, module: types.ModuleType) -> None:
    """The ``test_*`` functions the block defines pass, their arguments given as pytest fixtures."""
    tests = [f for n, f in vars(module).items() if n.startswith("test_") and inspect.isfunction(f)
             and f.__module__ == module.__name__]
    assert tests, "then=pytest-tests, but the block defines no test_* function"
    for fn in tests:
        fn(**{p: ctx.request.getfixturevalue(p) for p in inspect.signature(fn).parameters})


THEN: dict[str, Callable[[Ctx, types.ModuleType], None]] = {"registers": _registers, "pytest-tests": _pytest_tests}


def _namespace(module: types.ModuleType) -> dict:
    return {k: v for k, v in vars(module).items() if not k.startswith("__")}


def _load(path: Path, name: str, ctx: Ctx) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    ctx.monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def _install(ctx: Ctx, module: str, source: str | None = None) -> None:
    """``module`` (written to the site folder, or already there) as an installed distribution
    ``perceive-x`` whose ``perceive.plugins`` entry point ``x`` names it; the default registry
    is reloaded, as in a new process."""
    from perceive.plugins import reset_registry
    from tests.conftest import make_dist

    short = module.removeprefix("perceive_")
    if f"installed:{module}" not in ctx.cache:
        make_dist(ctx.site, "perceive-" + short.replace("_", "-"), {module: source} if source else {}, {short: module})
        ctx.cache[f"installed:{module}"] = True
        importlib.invalidate_caches()
    reset_registry()


# -- running a page -----------------------------------------------------------------------


def problems_of(page: str, blocks: list[Block]) -> list[str]:
    """What is wrong with the markers themselves (before anything runs)."""
    out, modules = [], set()
    for k, b in enumerate(blocks):
        m = b.marker
        for name in m.get("setup", []):
            if name not in SETUPS:
                out.append(f"{b.where}: unknown setup {name!r} (known: {', '.join(SETUPS)})")
        for name in m.get("then", []):
            if name not in THEN:
                out.append(f"{b.where}: unknown check then={name!r} (known: {', '.join(THEN)})")
        if m.get("continues") and (k == 0 or "not-runnable" in blocks[k - 1].marker):
            out.append(f"{b.where}: `continues`, but no runnable block comes before it")
        if "installed" in m and m["installed"] not in modules:
            out.append(f"{b.where}: installed={m['installed']}, but no earlier block of the page is module="
                       f"{m['installed']}")
        if "module" in m:
            modules.add(m["module"])
        if "run-by" in m:
            runner = ROOT / m["run-by"]
            if not runner.is_file() or Path(page).name not in runner.read_text():
                out.append(f"{b.where}: run-by={m['run-by']}, which is not a test file that reads {Path(page).name}")
    return out


def run_page(page: str, text: str, ctx: Ctx) -> tuple[list[str], int]:
    """Run the page's blocks in order: ``(failures, blocks run)``. A block that continues a
    failed one is not run (its failure is the earlier one's)."""
    blocks, problems = blocks_of(text, page)
    problems += problems_of(page, blocks)
    if problems:
        return problems, 0
    ctx.cwd.mkdir(parents=True, exist_ok=True)
    (ctx.cwd / "models").symlink_to(ROOT / "models", target_is_directory=True)
    ctx.monkeypatch.chdir(ctx.cwd)
    failures, ran, previous, failed = [], 0, None, False
    for k, b in enumerate(blocks):
        m = b.marker
        if "not-runnable" in m or "run-by" in m:
            previous, failed = None, False
            continue
        if m.get("continues") and failed:
            continue
        try:
            module = _run_block(b, k, ctx, previous if m.get("continues") else None)
            previous, failed = module, False
            ran += 1
        except Exception as exc:  # the block's failure is the test's report
            previous, failed = None, True
            first = (str(exc) or type(exc).__name__).splitlines()[0]
            failures.append(f"{b.where}: {type(exc).__name__}: {first}\n  -> fix the block, or mark it "
                            "<!-- docs-test: not-runnable: REASON --> on the line above its fence")
    return failures, ran


def _run_block(b: Block, k: int, ctx: Ctx, previous: types.ModuleType | None) -> types.ModuleType:
    m = b.marker
    if "installed" in m:
        _install(ctx, m["installed"])
    seed: dict[str, Any] = {}
    for name in m.get("setup", []):
        seed.update(SETUPS[name](ctx))
    code = compile("\n" * b.line + b.code, str(ROOT / b.page), "exec")  # tracebacks point at the page's lines
    if "module" in m:
        (ctx.site / f"{m['module']}.py").write_text(b.code)
        importlib.invalidate_caches()
        module = importlib.import_module(m["module"])
    else:
        module = previous or types.ModuleType(f"docs_block_{k}")
        ctx.monkeypatch.setitem(sys.modules, module.__name__, module)  # pydantic and dataclasses look it up
        vars(module).update(seed)
        exec(code, vars(module))
    for check in m.get("then", []):
        THEN[check](ctx, module)
    return module


# -- the tests ------------------------------------------------------------------------------

PAGES = [rel(p) for p in pages() if FENCE in p.read_text()]


def test_every_marker_is_well_formed():
    problems = []
    for page in pages():
        blocks, found = blocks_of(page.read_text(), rel(page))
        problems += found + problems_of(rel(page), blocks)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_the_python_blocks_of_a_page_run(page, tmp_path, request, monkeypatch, capsys):
    failures, _ = run_page(page, (ROOT / page).read_text(), Ctx(tmp_path / "cwd", request, monkeypatch))
    assert not failures, "\n".join(failures)


# -- the harness itself -----------------------------------------------------------------------


def _page(tmp_path, request, monkeypatch, text: str) -> tuple[list[str], int]:
    return run_page("docs/example.md", textwrap.dedent(text), Ctx(tmp_path / "cwd", request, monkeypatch))


def test_an_unmarked_block_that_fails_fails_with_its_line(tmp_path, request, monkeypatch):
    failures, ran = _page(tmp_path, request, monkeypatch, """
        Some text.

        ```python
        x = 1
        ```

        ```python
        perceive.load_config("run.yaml").build_loop()
        ```
        """)
    assert ran == 1 and len(failures) == 1
    assert failures[0].startswith("docs/example.md:8: NameError") and "not-runnable" in failures[0]


def test_a_not_runnable_marker_needs_its_reason(tmp_path, request, monkeypatch):
    failures, ran = _page(tmp_path, request, monkeypatch, """
        <!-- docs-test: not-runnable -->
        ```python
        import weights_we_do_not_have
        ```
        """)
    assert ran == 0 and failures == ["docs/example.md:3: not-runnable needs a reason: "
                                     "<!-- docs-test: not-runnable: REASON -->"]
    failures, ran = _page(tmp_path / "b", request, monkeypatch, """
        <!-- docs-test: not-runnable: needs the 7B weights -->
        ```python
        import weights_we_do_not_have
        ```
        """)
    assert (failures, ran) == ([], 0)


def test_a_misplaced_or_unknown_marker_is_refused(tmp_path, request, monkeypatch):
    failures, _ = _page(tmp_path, request, monkeypatch, """
        <!-- docs-test: setup=nonesuch -->
        ```python
        x = 1
        ```
        <!-- not-runnable: a reason, but not a docs-test marker -->

        ```python
        y = 2
        ```
        """)
    assert any("unknown setup 'nonesuch'" in f for f in failures), failures
    assert any(f.startswith("docs/example.md:6: a docs-test marker must be") for f in failures), failures


def test_blocks_continue_setups_apply_and_modules_install(tmp_path, request, monkeypatch):
    failures, ran = _page(tmp_path, request, monkeypatch, """
        <!-- docs-test: setup=photo,run-yaml -->
        ```python
        from PIL import Image
        size = Image.open("photo.jpg").size
        ```
        <!-- docs-test: continues -->
        ```python
        assert size == (448, 448), size
        assert open("run.yaml").read().startswith("model: models/default")
        ```
        <!-- docs-test: module=perceive_docs_good -->
        ```python
        from pydantic import BaseModel

        from perceive import Action, Box, TriggerGrammar, hookimpl

        class HalfArgs(BaseModel):
            pass

        class Half(Action):
            name = "docs_half"
            grammar = TriggerGrammar(start="<|docs_half_start|>", end="<|docs_half_end|>")
            Args = HalfArgs

            def run(self, call, context):
                w, h = context.frame.size
                return context.crop_root(Box(0, 0, max(1, w // 2), h, context.frame.id))

        @hookimpl
        def perceive_register_actions():
            return [Half()]
        ```
        <!-- docs-test: installed=perceive_docs_good -->
        ```python
        from perceive.plugins import get_registry
        assert get_registry().actions["docs_half"].dist == "perceive-docs-good"
        ```
        """)
    assert (failures, ran) == ([], 4)


def test_the_sobel_example_is_the_plugin_the_end_to_end_test_runs():
    """write-a-plugin.md says its worked example is tests/plugins/sobel.py, which
    tests/test_third_party_branch.py trains, saves, loads and evaluates: the two must not drift."""
    page = "docs/how-to/write-a-plugin.md"
    blocks, _ = blocks_of((ROOT / page).read_text(), page)
    (doc,) = [b.code for b in blocks if b.marker.get("module") == "perceive_sobel"]
    tested = (ROOT / "tests" / "plugins" / "sobel.py").read_text()
    assert tested.endswith(doc) and tested[: -len(doc)].startswith('"""'), (
        "docs/how-to/write-a-plugin.md's sobel block and tests/plugins/sobel.py differ (below its docstring)")
