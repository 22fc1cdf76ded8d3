"""What a benchmark reader is: the items of a local benchmark file, and how an answer scores.

A :class:`Benchmark` reads a local file in its benchmark's published format into
:class:`EvalItem` values (the prompt as the benchmark builds it, the ground truth, the category,
the options of a multiple-choice item in the order shown), and scores a prediction by the
benchmark's own extraction rule and metric (:meth:`Benchmark.score`). Figures over many records
are :meth:`Benchmark.figures`: the mean of each metric, or a benchmark's own aggregate (HR-Bench
averages its cycles).

Multiple-choice items are shown with their options shuffled (seeded per item) unless the run
says otherwise, so that a model's letter prior cannot score; the item keeps the permutation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class EvalItem:
    """One question of a benchmark, ready to ask.

    ``index`` is the item's row in the file (it keys resumed runs and seeds sampling);
    ``question`` is the full prompt text the model gets (with the options and the benchmark's
    instruction); ``answers`` the ground truths (a letter for multiple choice, 10 answers for
    TextVQA); ``options`` the option texts of a multiple-choice item in the order shown (A, B, ...),
    ``order`` where each shown option was in the file (``order[k]``: the file's position of shown
    option ``k``); ``box`` a ground-truth region in the image's pixels ``(x0, y0, x1, y1)``;
    ``fields`` extra scalars recorded with the sample (``category``, ``cycle_category``, ids)."""

    index: int
    question: str
    answers: list[str]
    load: Callable[[], Image.Image]
    category: str | None = None
    options: list[str] | None = None
    order: list[int] | None = None
    box: tuple[int, int, int, int] | None = None
    fields: dict[str, str | int | float | bool] = field(default_factory=dict)
    #: the paper layout's example, decoded on call (oracle spans force its first assistant turn)
    example: Callable[[], Any] | None = None

    @property
    def answer(self) -> str:
        return self.answers[0] if self.answers else ""


@dataclass
class ReadResult:
    """A benchmark file read: its usable items, and the rows left out with why (row -> problems)."""

    items: list[EvalItem]
    total: int
    skipped: list[tuple[int, list[str]]] = field(default_factory=list)
    #: the folder image paths resolve against (the paper layout), for the hint of a run with none found
    root: str | None = None
    #: where a refused run finds every skipped row (``None``: ``perceive data check FILE``, the paper's)
    listing: str | None = "the first rows of each problem are listed above"


class Benchmark:
    """A benchmark's format and metric. Subclass it, set the class attributes, and implement
    :meth:`read` and :meth:`score`.

    ``metrics`` are the per-sample figures :meth:`score` returns (the first is the headline);
    ``choices`` says the items are multiple choice (option shuffling applies); ``extraction``
    names the rule that turns a response into an answer, recorded in every result's protocol."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    choices: ClassVar[bool] = False
    extraction: ClassVar[str] = ""
    #: each item carries its own perception span, which ``oracle_spans`` can force
    spans: ClassVar[bool] = False

    def read(self, path: Path, *, shuffle: bool, seed: int, split: str | None = None) -> ReadResult:
        """The file's items (``split``: which split of a ``save_to_disk`` folder of several)."""
        raise NotImplementedError

    def score(self, prediction: str, item: EvalItem) -> dict[str, Any]:
        """The sample's figures (each of :attr:`metrics`, a float in [0, 1]) and ``extracted``:
        what the extraction rule read from ``prediction`` (``None``: nothing)."""
        raise NotImplementedError

    def figures(self, records: list[dict]) -> dict[str, float | None]:
        """The run's headline figures over ``records`` (each with the keys of :meth:`score`):
        the mean of each metric. A benchmark whose published score is another aggregate overrides
        this (HR-Bench: the mean of its cycles' accuracies)."""
        from perceive.eval.stats import mean_of

        return {m: mean_of(records, m) for m in self.metrics}

    @classmethod
    def bootstrapped(cls) -> bool:
        """Whether the score is an aggregate other than the mean (:meth:`figures` overridden): its
        interval is then a bootstrap over items, not the normal one."""
        return cls.figures is not Benchmark.figures


def shuffled(options: list[str], answer: int, *, shuffle: bool, seed: int,
             index: int) -> tuple[list[str], list[int], int]:
    """``options`` in the order shown, the file position of each, and the shown position of the
    correct option ``answer`` (its file position). Seeded by ``(seed, index)``: the same run shows
    the same order, and an item's order does not depend on which other items are read."""
    order = list(range(len(options)))
    if shuffle:
        random.Random(f"{seed}:{index}").shuffle(order)
    return [options[k] for k in order], order, order.index(answer)


def letter(k: int) -> str:
    return LETTERS[k]


def open_table(path: Path, split: str | None = None):
    """A local benchmark file as a ``datasets.Dataset``: a parquet file, an arrow file, or a folder
    written by ``Dataset.save_to_disk`` (``split``: which split of a ``DatasetDict`` folder). Rows
    decode lazily. Nothing is downloaded."""
    from perceive.errors import DataUnusableError

    try:
        import datasets
    except ImportError:  # pragma: no cover - the extra is installed in CI
        raise DataUnusableError("reading a benchmark file needs the `datasets` library",
                                hint="pip install 'perceive[benchmarks]'") from None
    path = Path(path)
    if not path.exists():
        raise DataUnusableError(f"no benchmark file at {path}", hint="give --data a local .parquet or .arrow file "
                                "(or a folder written by datasets' save_to_disk); nothing is downloaded")
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split is None and len(ds) == 1:
                    split = next(iter(ds))
                if split not in ds:
                    raise DataUnusableError(f"{path} holds the splits {sorted(ds)}",
                                            hint="name one with benchmark.split")
                ds = ds[split]
            return ds
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            # the table as it is (its schema's metadata keeps the Image features): from_parquet would
            # copy the whole file into the datasets cache first
            return datasets.Dataset(pq.read_table(str(path)))
        if path.suffix == ".arrow":
            return datasets.Dataset.from_file(str(path), in_memory=True)
    except DataUnusableError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow and datasets raise many kinds for a bad file
        raise DataUnusableError(f"cannot read the benchmark file {path}: {type(exc).__name__}: {exc}",
                                hint="give a parquet or arrow file in the benchmark's published format") from None
    raise DataUnusableError(f"{path}: a benchmark file is .parquet or .arrow (or a save_to_disk folder)",
                            hint="convert it with datasets: Dataset.from_...(...).to_parquet(PATH)")
