"""The items a dataset left out: one entry per item, grouped by reason, checked against a limit.

Training and evaluation both refuse to go on when a dataset leaves nothing usable, or when it
skips more than ``max_skipped_fraction`` of its items: a half-broken dataset must not pass for a
clean score (or a clean training run). Below the limit, the skipped items are still reported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from perceive.errors import DataUnusableError

#: the share of a dataset's items that may be skipped before a run refuses it (train and eval)
DEFAULT_MAX_SKIPPED_FRACTION = 0.05

_REASONS = (
    (re.compile(r"^missing file "), "missing image file"),
    (re.compile(r"placeholder\(s\) but \d+ entries"), "placeholders and images do not match"),
    (re.compile(r"^grid token .* is outside"), "grid token outside the grid"),
    (re.compile(r"^empty crop "), "empty crop box"),
    (re.compile(r"^turns must alternate"), "turns out of order"),
    (re.compile(r"^(not an object|messages must be)"), "malformed item"),
)


def reason_of(problem: str) -> str:
    """The kind of a dataset problem (``"missing file images/3.png"`` -> ``"missing image file"``)."""
    for rx, name in _REASONS:
        if rx.search(problem):
            return name
    return re.sub(r"\d+", "N", problem)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


@dataclass
class Skipped:
    """The items of one dataset file that were skipped, each once with its problems."""

    source: str
    total: int  # items in the file, usable or not
    items: list[tuple[int, list[str]]] = field(default_factory=list)  # (index, problems), in file order
    root: str | None = None  # the folder image paths resolve against
    #: how to see every skipped item (default: ``perceive data check FILE``, for the paper's layout)
    listing: str | None = None

    @classmethod
    def of(cls, ds) -> Skipped:
        """From a ``VPTDataset``: an item with several problems (say, an image and its crop both
        missing) is one skipped item, and a problem repeated within an item is listed once."""
        by_item: dict[int, list[str]] = {}
        for issue in ds.issues:
            problems = by_item.setdefault(issue.index, [])
            if issue.message not in problems:
                problems.append(issue.message)
        return cls(str(ds.path), len(ds) + len(by_item), sorted(by_item.items()), str(ds.root))

    @classmethod
    def from_json(cls, source: str, total: int, entries: list[dict]) -> Skipped:
        return cls(source, total, [(e["index"], list(e["problems"])) for e in entries])

    def to_json(self) -> list[dict]:
        return [{"index": i, "problems": p} for i, p in self.items]

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def usable(self) -> int:
        return self.total - self.count

    @property
    def fraction(self) -> float:
        return self.count / self.total if self.total else 0.0

    def by_reason(self) -> dict[str, list[tuple[int, str]]]:
        """Reason -> (index, problem) of each item it skipped; most frequent reason first."""
        groups: dict[str, list[tuple[int, str]]] = {}
        for index, problems in self.items:
            seen = set()
            for p in problems:
                r = reason_of(p)
                if r not in seen:
                    seen.add(r)
                    groups.setdefault(r, []).append((index, p))
        return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))

    def lines(self, examples: int = 3) -> list[str]:
        """One line per reason: how many items it skipped, and the first few."""
        out = []
        for reason, hits in self.by_reason().items():
            shown = "; ".join(f"item {i}: {p}" for i, p in hits[:examples])
            more = f"; and {len(hits) - examples} more" if len(hits) > examples else ""
            out.append(f"  {reason}: {len(hits)} item(s), e.g. {shown}{more}")
        return out

    def describe(self, examples: int = 3) -> str:
        """``N of M item(s) in FILE skipped (P%):`` then one line per reason with its first items."""
        head = f"{self.count} of {self.total} item(s) in {self.source} skipped ({_pct(self.fraction)}):"
        return "\n".join([head, *self.lines(examples)])

    def check(self, max_fraction: float, setting: str = "max_skipped_fraction") -> None:
        """Raise ``DataUnusableError`` when no item is usable, or when more than ``max_fraction``
        of them were skipped. ``setting`` names the config field that raises the limit (the CLI's
        ``--max-skipped-fraction``), for the hint."""
        check = self.listing or f"`perceive data check {self.source}` lists every problem"
        if self.total == 0:
            raise DataUnusableError(f"{self.source} holds no items", hint="point the run at a non-empty dataset")
        if self.usable == 0:
            hint = check
            if self.root and all(reason_of(p) == "missing image file" for _, ps in self.items for p in ps):
                hint = (f"none of the images it names was found; its image paths resolve against its folder "
                        f"{self.root}: was the file moved away from its images? Move it back or fix the paths; "
                        + check)
            raise DataUnusableError("\n".join([f"no usable item in {self.source}: all {self.total} skipped",
                                               *self.lines()]), hint=hint)
        if self.fraction > max_fraction:
            needed = math.ceil(self.fraction * 100) / 100
            raise DataUnusableError(
                f"{self.describe()}\nthat is more than the {_pct(max_fraction)} that {setting} allows: a result "
                f"on the {self.usable} usable item(s) would pass for one on the whole set",
                hint=f"fix the items ({check}), or accept the {self.usable} usable item(s) with "
                     f"--max-skipped-fraction {needed:g} ({setting}: {needed:g} in the config)")


__all__ = ["DEFAULT_MAX_SKIPPED_FRACTION", "Skipped", "reason_of"]
