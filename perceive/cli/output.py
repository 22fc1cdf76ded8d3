"""Shared CLI output: one console, and errors printed the same way everywhere."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def fail(message: object, code: int = 1) -> typer.Exit:
    """Print ``error: MESSAGE`` (the message escaped, so brackets in it stay text) and return the
    ``typer.Exit`` to raise."""
    console.print(f"[red]error[/]: {escape(str(message))}")
    return typer.Exit(code)
