"""Shared CLI output: one console, and errors printed the same way everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    import socket

console = Console()
#: for errors that must not mix into a command's machine-readable stdout (``--json``)
err_console = Console(stderr=True)

DEBUG_HINT = "rerun with `perceive --debug ...` or PERCEIVE_DEBUG=1 for the traceback"


def print_error(message: object, hint: str | None = None, *, stderr: bool = False) -> None:
    """``error: MESSAGE`` and, when there is one, ``  -> HINT`` on the next line. Escaped (brackets
    stay text) and never wrapped, so a path in the message stays whole. ``stderr``: there, not on
    stdout (after ``--json`` output, which must stay parseable)."""
    out = err_console if stderr else console
    out.print(f"[red]error[/]: {escape(str(message))}", soft_wrap=True, highlight=False)
    if hint:
        out.print(f"  -> {escape(hint)}", soft_wrap=True, highlight=False)


def fail(message: object, code: int = 1) -> typer.Exit:
    """Print ``error: MESSAGE`` (a :class:`~perceive.errors.PerceiveError` with its hint on the
    next line) and return the ``typer.Exit`` to raise."""
    from perceive.errors import PerceiveError

    if isinstance(message, PerceiveError):
        print_error(message.message, message.hint)
    else:
        print_error(message)
    return typer.Exit(code)


def warn_skipped(skipped) -> None:
    """Print a dataset's skipped items (a :class:`~perceive.data.skipped.Skipped`: how many, why,
    the first few) as a warning."""
    if skipped.items:
        console.print(f"[yellow]warning[/]: {escape(skipped.describe())}")


def shell_command(*args: object) -> str:
    """A command line the user can paste into a shell (each argument quoted where it must be)."""
    import shlex

    return " ".join(shlex.quote(str(a)) for a in args)


def internal_error(exc: BaseException) -> typer.Exit:
    """One line for an exception that is not the user's mistake: what it was, and how to see more."""
    text = str(exc).strip().splitlines()
    what = type(exc).__name__ + (f": {text[0]}" if text else "")
    console.print(f"[red]internal error[/] (a bug in perceive or a plugin): {escape(what)}; {DEBUG_HINT}",
                  soft_wrap=True, highlight=False)
    return typer.Exit(1)


def check_picture_path(path, option: str = "--render") -> None:
    """A picture is about to be written to ``path``: fail early (before a model loads) when it is a
    folder or has an extension no image format uses."""
    from pathlib import Path

    from PIL import Image

    path = Path(path)
    if path.is_dir():
        raise fail(f"{option} {path} is a folder; give a file path such as {path / 'trace.png'}", 2)
    Image.init()
    if path.suffix.lower() not in Image.registered_extensions():
        raise fail(f"{option} {path}: the picture's format comes from its extension; give a path ending in .png", 2)


def write_picture(write: Callable[[], object], path, option: str = "--render") -> tuple[str, str] | None:
    """Call ``write()``, which writes a picture to ``path``: None when it did, else the
    ``(message, hint)`` that says why it could not. The picture shows a finished run, so the
    caller prints the run's result first and this error after it: an unwritable path (a read-only
    folder, a file where a folder belongs) never throws the answer away."""
    from pathlib import Path

    try:
        write()
    except (OSError, ValueError) as exc:
        # mkdir under a file says only "File exists": name the file that is in the way
        blocker = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (getattr(exc, "strerror", None) or str(exc))
        return (f"cannot write the trace picture {option} {path}: {why}",
                f"the answer above stands; to get the picture, pass {option} a path in a folder you can write to")
    return None


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (``[::1]``), anything else as is."""
    return f"[{host}]" if ":" in host else host


def listen_or_fail(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (:func:`perceive.netserve.listen`; needs uvicorn, so the caller has
    checked its extra), or the ``typer.Exit`` raised after one error line saying why it cannot listen."""
    from perceive.errors import PerceiveError
    from perceive.netserve import listen

    try:
        return listen(host, port)
    except OSError as exc:
        raise fail(PerceiveError(f"cannot listen on {url_host(host)}:{port}: {exc.strerror or exc}",
                                 hint="another server may use the port: choose another --port (0: any free one), "
                                      "or a --host of this machine")) from None
