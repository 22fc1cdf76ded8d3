"""serve, remote, eval and the CLI consume the loop's events: none imports the sample type or the
loop's internals, and none reads a sample's fields. The check is shown to catch each kind of
violation."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "perceive"
CONSUMERS = ["serve", "remote", "eval", "cli", "loop_factory.py"]
#: the loop's public face: the package itself (its __init__ exports) and its events
PUBLIC = {"perceive.loop", "perceive.loop.events"}
#: names no consumer may import, from anywhere
INTERNAL_NAMES = {"Sample", "Observer", "Stepper", "Batch"}
#: attributes only the engine side reads (a sample's state, the loop's token bookkeeping)
SAMPLE_FIELDS = {"generated", "answer_from", "pending", "outbox", "unanswered", "perception_ids", "eos",
                 "observer", "stepper", "awaiting_control", "decoded_since_hop"}


def violations(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[:2] == ["perceive", "loop"]:
            if node.module not in PUBLIC:
                found.append(f"imports {node.module}")
            found += [f"imports {a.name}" for a in node.names if a.name in INTERNAL_NAMES]
        elif isinstance(node, ast.Import):
            found += [f"imports {a.name}" for a in node.names
                      if a.name.startswith("perceive.loop.") and a.name not in PUBLIC]
        elif isinstance(node, ast.Attribute) and node.attr in SAMPLE_FIELDS:
            found.append(f"reads .{node.attr}")
    return found


def consumer_files():
    for name in CONSUMERS:
        path = ROOT / name
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


@pytest.mark.parametrize("path", list(consumer_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_consumer_reads_events_only(path):
    assert violations(path.read_text()) == []


@pytest.mark.parametrize("source", [
    "from perceive.loop.sample import Answer",
    "from perceive.loop import Sample",
    "import perceive.loop.session",
    "from perceive.loop.continuous_batching import Batch",
    "def f(job):\n    return job.sample.generated[job.sample.answer_from:]",
    "def f(loop, t):\n    return t in loop.eos",
])
def test_the_check_catches_an_injected_violation(source):
    assert violations(source)


def test_the_public_loop_api_passes():
    assert violations("from perceive.loop import Finished, TokenDelta, PerceptionLoop\n"
                      "from perceive.loop.events import HopFinished\n") == []
