"""Help pages: no ``<bool>`` type beside on/off flags.

typer 0.2x's rich help prints every option's type, flags included (``--json <bool>``), though a
flag takes no value; its plain-text help and older typers (which skipped click's ``BOOLEAN``)
show none. A flag's type column is left empty here; options that take a value keep theirs.
"""

from __future__ import annotations

from typer.core import TyperOption


def hide_flag_types() -> None:
    """Patch :class:`typer.core.TyperOption` once so a flag's help row shows no type."""
    original = TyperOption.display_type_rich
    if getattr(original, "_perceive_hides_flags", False):
        return

    def display_type_rich(self, ctx):
        if self.is_flag and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._perceive_hides_flags = True
    TyperOption.display_type_rich = display_type_rich
