"""Typed errors. Every error says what went wrong and what to do next.

Errors that happen *inside* a perception loop (a malformed span, a failing plugin) are
recorded as values in the trace instead of being raised; see `perceive.protocols.calls.ParseError`
and `perceive.dispatch.ActionFailure`. The exceptions here are for the caller's mistakes:
a bad config, an unreadable image, an unknown action name.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    CONFIG_INVALID = "config-invalid"
    IMAGE_UNREADABLE = "image-unreadable"
    UNKNOWN_ACTION = "unknown-action"
    UNKNOWN_ENCODER = "unknown-encoder"
    UNKNOWN_IMAGE = "unknown-image"
    PLUGIN_INVALID = "plugin-invalid"
    ACTION_INPUT = "action-input"
    OBSERVATION_INVALID = "observation-invalid"
    ENCODER_UNAVAILABLE = "encoder-unavailable"
    MODEL_LOAD = "model-load"
    ACTION_TIMEOUT = "action-timeout"
    INPUT_INVALID = "input-invalid"
    DATA_UNUSABLE = "data-unusable"
    CHECKPOINT_INVALID = "checkpoint-invalid"
    REMOTE_FAILED = "remote-failed"
    OUTPUT_UNWRITABLE = "output-unwritable"
    RESUME_INVALID = "resume-invalid"
    #: not a PerceiveError: a bug in perceive or a plugin (recorded errors only; the CLI says so in one line)
    INTERNAL = "internal"


class PerceiveError(Exception):
    """Base class. `hint` tells the user what to do next."""

    code: ErrorCode = ErrorCode.CONFIG_INVALID

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  -> {hint}")


class ConfigError(PerceiveError, ValueError):
    code = ErrorCode.CONFIG_INVALID


class ImageError(PerceiveError, ValueError):
    code = ErrorCode.IMAGE_UNREADABLE


class UnknownActionError(PerceiveError, KeyError):
    code = ErrorCode.UNKNOWN_ACTION

    def __str__(self) -> str:  # KeyError would repr() the message
        return Exception.__str__(self)


class UnknownEncoderError(UnknownActionError):
    code = ErrorCode.UNKNOWN_ENCODER


class UnknownImageError(PerceiveError, KeyError):
    """An image id (``perceive mcp``'s ``img3``, ``img3.v1``) that names no image held: never given
    out, or let go from the image store since (least recently used first)."""

    code = ErrorCode.UNKNOWN_IMAGE

    def __str__(self) -> str:  # KeyError would repr() the message
        return Exception.__str__(self)


class PluginValidationError(PerceiveError):
    """A plugin is wrong at load time. Names the plugin and its distribution."""

    code = ErrorCode.PLUGIN_INVALID

    def __init__(self, plugin: str, dist: str | None, message: str, *, hint: str | None = None):
        self.plugin = plugin
        self.dist = dist
        where = f"plugin '{plugin}'" + (f" (distribution {dist})" if dist else "")
        super().__init__(f"{where}: {message}", hint=hint)


class ActionInputError(PerceiveError, ValueError):
    """An action was called with arguments it cannot serve (e.g. a box fully outside the image).

    Actions raise this for bad *input*; the dispatcher records it in the trace."""

    code = ErrorCode.ACTION_INPUT


class ObservationError(PerceiveError, TypeError):
    """An action returned something that is not the observation it declared. ``invariant`` names
    the observation invariant it breaks (a ``perceive.observations.Invariant`` value), when one does."""

    code = ErrorCode.OBSERVATION_INVALID

    def __init__(self, message: str, *, hint: str | None = None, invariant: str | None = None):
        super().__init__(message, hint=hint)
        self.invariant = invariant


class EncoderUnavailableError(PerceiveError, RuntimeError):
    """An encoder was asked for but cannot be built (no weights path configured, say)."""

    code = ErrorCode.ENCODER_UNAVAILABLE


class ModelLoadError(PerceiveError, RuntimeError):
    code = ErrorCode.MODEL_LOAD


class ActionTimeoutError(PerceiveError, TimeoutError):
    """A perception call passed its timeout (recorded in the trace, finish reason
    ``action_timeout``); or its action is quarantined after earlier calls did."""

    code = ErrorCode.ACTION_TIMEOUT


class InputError(PerceiveError, ValueError):
    """A question the model cannot take: empty, or longer than its context."""

    code = ErrorCode.INPUT_INVALID


class DataUnusableError(PerceiveError, ValueError):
    """A dataset leaves nothing to train or evaluate on, or skips more of its items than allowed
    (``max_skipped_fraction``): a half-broken set must not pass for a clean run."""

    code = ErrorCode.DATA_UNUSABLE


class CheckpointError(PerceiveError, RuntimeError):
    """A training checkpoint to resume from is missing, incomplete or does not fit the run."""

    code = ErrorCode.CHECKPOINT_INVALID


class RemoteError(PerceiveError, RuntimeError):
    """A remote endpoint (``--remote URL``) could not be reached, or refused a request after its
    retries."""

    code = ErrorCode.REMOTE_FAILED


class OutputError(PerceiveError, OSError):
    """An output path cannot be written (under a file, a folder without write permission): found
    before any work, so a run never ends unable to keep its results."""

    code = ErrorCode.OUTPUT_UNWRITABLE


class ResumeError(PerceiveError, ValueError):
    """``eval --resume`` cannot finish a partial run: there is none, or it used another config or
    data; or a new run would replace an unfinished one."""

    code = ErrorCode.RESUME_INVALID


def error_code(exc: BaseException) -> str:
    """The stable code of ``exc`` as traces and error JSON carry it: its ``ErrorCode`` value, or
    ``internal`` for an exception that is not a ``PerceiveError``."""
    code = getattr(exc, "code", None) if isinstance(exc, PerceiveError) else None
    return code.value if isinstance(code, ErrorCode) else ErrorCode.INTERNAL.value


def closest(name: str, choices, n: int = 3) -> list[str]:
    """Close matches for 'did you mean' hints."""
    import difflib

    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)


def did_you_mean(name: str, choices) -> str | None:
    matches = closest(name, choices)
    if matches:
        return "did you mean " + " or ".join(f"'{m}'" for m in matches) + "?"
    known = sorted(choices)
    return ("known: " + ", ".join(known)) if known else None


def trace_error(exc: BaseException) -> dict:
    """``exc`` as a trace's ``error``: ``code`` is its documented ``ErrorCode`` value (``internal``
    for one that is not a ``PerceiveError``), the stable field to read; ``type`` its class name;
    ``message`` and, when it has one, ``hint``."""
    d = {"code": error_code(exc), "type": type(exc).__name__, "message": getattr(exc, "message", str(exc))}
    if getattr(exc, "hint", None):
        d["hint"] = exc.hint
    return d


class ConfigDeprecationWarning(DeprecationWarning):
    """A config key or value that still works for one release but has a new home. Unlike other
    deprecation warnings it is for the person running a command, so the CLI always shows it."""
