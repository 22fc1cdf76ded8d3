"""What a training run says about each evaluation: one line on the console, the full record in
``OUTPUT/evals.jsonl``.

An evaluation record (:meth:`perceive.train.Trainer.evaluate`) holds the loss and a token
accuracy per perception token (about 20 keys on a region model): too much to print at every
evaluation, so the console gets the few numbers worth watching and the file keeps everything,
one JSON object per line, ``{"step": N, "loss": ..., "token_accuracy": {...}, "samples": ...}``.
"""

from __future__ import annotations

import json
from pathlib import Path

EVALS_FILE = "evals.jsonl"

#: (token_accuracy key, its label on the console), in print order; a key the evaluation lacks
#: (no region tokens, no digit answers) is left out of the line
SUMMARY_KEYS = (("all", "tokens"), ("perception", "perception"), ("region_first_cell", "first cell"),
                ("digits", "digits"))


def eval_line(step: int, record: dict) -> str:
    """``eval step 200  loss 0.123  tokens 0.812  perception 0.900  first cell 0.710  digits 0.650``:
    the loss and the token accuracies a run is judged by (``region_first_cell`` is the one that
    says whether the model localises; see :func:`perceive.train.trainer.token_accuracy`)."""
    acc = record.get("token_accuracy", {})
    parts = [f"eval step {step}", f"loss {record['loss']:.4f}"]
    parts += [f"{label} {acc[key]:.3f}" for key, label in SUMMARY_KEYS if key in acc]
    return "  ".join(parts)


def append_eval(output: Path, step: int, record: dict) -> None:
    """Add one evaluation record to ``output/evals.jsonl``."""
    output.mkdir(parents=True, exist_ok=True)
    with (output / EVALS_FILE).open("a") as f:
        f.write(json.dumps({"step": step, **record}) + "\n")


def rewrite_evals(output: Path, history: list[dict]) -> None:
    """``output/evals.jsonl`` from the evaluations in ``history`` (a resumed run's, from its
    checkpoint): an evaluation the interrupted run made after its checkpoint is made again by the
    resumed run, and must not be listed twice."""
    output.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": h["step"], **h["eval"]}) + "\n" for h in history if "eval" in h]
    (output / EVALS_FILE).write_text("".join(lines))


def read_evals(output: Path) -> list[dict]:
    """The records of ``output/evals.jsonl``, oldest first."""
    path = output / EVALS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
