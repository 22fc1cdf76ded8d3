"""Errors in traces carry the documented, stable ``code`` (an ``ErrorCode`` value, docs/reference/errors.md),
with the class name kept as ``type`` / ``error_type``; ``internal`` marks an exception that is not a
PerceiveError (a bug)."""

import pytest

from perceive import hookimpl
from perceive.errors import ActionInputError, ErrorCode, ImageError, PerceiveError, error_code
from perceive.loop import LoopOptions, PerceptionLoop
from perceive.plugins import load_registry
from perceive.testing.images import real_photos
from perceive.testing.scripted import ScriptedPolicy, span_tokens
from perceive.testing.tiny import tiny_vpt_model

REGION = "<|region_token_start|><|x_2|><|y_0|><|x_3|><|y_1|><|region_token_end|>"


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


@pytest.mark.parametrize("cls", sorted({c for c in _all_subclasses(PerceiveError) if c.__module__ == "perceive.errors"},
                                       key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_each_error_type_gives_its_own_code(cls):
    exc = cls.__new__(cls)  # no constructor arguments needed to read the class's code
    assert error_code(exc) == cls.code.value


def test_an_exception_that_is_not_a_perceive_error_is_internal():
    assert error_code(ZeroDivisionError("x")) == ErrorCode.INTERNAL.value == "internal"


@pytest.fixture(scope="module")
def model():
    return tiny_vpt_model(branches=())


def _loop(model, registry=None):
    tok = model.tokenizer
    return PerceptionLoop(model, registry=registry, options=LoopOptions(max_new_tokens=12),
                          policy=ScriptedPolicy(tok, {0: span_tokens(tok, REGION)}))


class Fails:
    """A plugin whose region_select calls raise ``exc``."""

    def __init__(self, exc):
        self.exc = exc

    @hookimpl(tryfirst=True)
    def perceive_run_action(self, action, call, context):
        raise self.exc


@pytest.mark.parametrize("exc,code", [(ActionInputError("no such box"), "action-input"),
                                      (ZeroDivisionError("plugin bug"), "internal")],
                         ids=["typed", "bug"])
def test_a_failed_hop_carries_the_code(model, exc, code):
    ans = _loop(model, load_registry([("fails", Fails(exc))])).ask(real_photos()["astronaut"], "What?")
    hop = ans.trace.hops[0]
    assert (hop.error["code"], hop.error["error_type"]) == (code, type(exc).__name__)
    assert (ans.error["code"], ans.error["type"]) == (code, "action_failed")  # type: the finish reason


def test_a_sample_error_carries_the_code(model, tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"garbage")
    out = _loop(model).ask_batch([(bad, "What?")])
    assert out[0].error["code"] == ErrorCode.IMAGE_UNREADABLE.value
    assert out[0].error["type"] == ImageError.__name__  # the class name, for readers that still use it
