"""An eval run's output folder, written as the run goes so that a run that dies keeps its work.

``OUT/fingerprint.json``   what the run is (the config fields that change predictions, the data
                           file's hash, the model's files), written before its first sample
``OUT/predictions.jsonl``  one line per finished sample (its record and its trace), flushed as
                           the sample finishes
``OUT/eval.json``, ``eval.md``  the results, written once every sample has finished

Every path is checked before any work (:func:`check_output_folder`). ``--resume`` keeps the
samples predictions.jsonl holds, keyed by their item index in the data file, and runs the others;
a last line cut short by a kill is dropped and its sample runs again. A run whose fingerprint
differs from the partial run's is refused: its predictions would not belong together.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from perceive.errors import OutputError, ResumeError

FINGERPRINT = "fingerprint.json"
PREDICTIONS = "predictions.jsonl"
RESULTS = ("eval.json", "eval.md")
FILES = (FINGERPRINT, PREDICTIONS, *RESULTS)
VERSION = 1

#: config fields that do not change a sample's prediction: a resumed run may change them
#: (``ray``: where the samples run, not what they answer: a run stopped on Ray resumes in one process)
#: (``runtime.max_batch_size``: the engine computes each sample of a batch as it would alone;
#: ``serve``, ``mcp``: perceive serve's and perceive mcp's settings, which an eval never reads)
NOT_FINGERPRINTED = ("output", "name", "batch_size", "runtime.max_batch_size", "serve", "max_skipped_fraction",
                     "remote.timeout_s", "remote.max_retries", "remote.concurrency", "remote.api_key_env",
                     "judge.retries", "judge.api_key_env", "ray", "mcp")


# -- output paths ---------------------------------------------------------------------------------


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def _creatable(path: Path, option: str) -> None:
    """``path`` does not exist: its nearest existing parent must be a folder we may write in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create {option} {path}: {parent} is a file, not a folder",
                          hint=f"give {option} a path under a folder")
    if not _writable(parent):
        raise OutputError(f"cannot create {option} {path}: the folder {parent} is not writable",
                          hint=f"give {option} a folder you may write in")


def check_output_folder(out: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output folder the run could not write its files in: a file, a
    path under a file, a folder (or one of its files) without write permission."""
    out = Path(out)
    if not out.exists():
        _creatable(out, option)
        return
    if not out.is_dir():
        raise OutputError(f"{option} {out} is a file, not a folder", hint=f"give {option} a folder")
    if not _writable(out):
        raise OutputError(f"the output folder {out} is not writable", hint=f"give {option} a folder you may write in")
    for name in FILES:
        f = out / name
        if f.is_dir():
            raise OutputError(f"cannot write {f}: it is a folder",
                              hint=f"move it away, or give {option} another folder")
        if f.exists() and not _writable(f):
            raise OutputError(f"cannot write {f}: it is not writable", hint=f"give {option} another folder")


def check_output_file(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output file that could not be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder, not a file", hint=f"give {option} a file path such as "
                                                                            f"{path / 'compare.md'}")
    if not path.exists():
        _creatable(path, option)
    elif not _writable(path):
        raise OutputError(f"cannot write {option} {path}: it is not writable", hint=f"give {option} another path")


# -- what a run is ------------------------------------------------------------------------------


def _digest(path: Path, edge: int = 1 << 20) -> str:
    """A file's sha256; for a large file, of its first and last ``edge`` bytes and its size (a
    retrained model's weights differ there; reading gigabytes would not tell more)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= 2 * edge:
            h.update(f.read())
        else:
            h.update(f.read(edge))
            f.seek(size - edge)
            h.update(f.read(edge))
            h.update(str(size).encode())
    return h.hexdigest()


def data_digest(path) -> str | None:
    """The data file's whole sha256; ``None`` when it cannot be read (a folder, a missing file)."""
    try:
        return _digest(Path(path), edge=1 << 62) if Path(path).is_file() else None
    except OSError:
        return None


def model_digests(path) -> dict[str, str] | None:
    """File name -> digest (:func:`_digest`) of each file of a local model folder; ``None``: no folder."""
    if path is None or not Path(path).is_dir():
        return None
    return {p.name: _digest(p) for p in sorted(Path(path).iterdir()) if p.is_file()}


def fingerprint(cfg, model_files: bool = True) -> dict[str, Any]:
    """What makes an eval run's predictions: its config (less :data:`NOT_FINGERPRINTED`, with the
    model and data paths absolute), the data file's sha256 (``None``: unreadable, left to the data
    checks) and, with ``model_files``, a digest of each file of the local model folder."""
    config = cfg.model_dump(mode="json")
    for dotted in NOT_FINGERPRINTED:
        *parents, key = dotted.split(".")
        d = config
        for p in parents:
            d = d.get(p) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(key, None)
    config["data"] = str(Path(cfg.data).resolve())
    model = Path(cfg.model.path) if cfg.model.path is not None else None
    if model is not None:
        config["model"]["path"] = str(model.resolve())
    data = data_digest(cfg.data)
    files = model_digests(model) if model_files else None
    return {"version": VERSION, "config": config, "data_sha256": data, "model_files": files}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(then: dict, now: dict) -> list[str]:
    """What differs between two fingerprints, one phrase each (config fields by their dotted
    path)."""
    found = []
    a, b = _flat(then.get("config") or {}), _flat(now.get("config") or {})
    for key in sorted(set(a) | set(b), key=lambda k: (k not in b, k)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            was = _short(a[key]) if key in a else "unset"
            found.append(f"{key} was {was}, now {_short(b[key]) if key in b else 'unset'}")
    if now.get("data_sha256") is not None and then.get("data_sha256") != now["data_sha256"]:
        found.append(f"the data file's content changed ({now['config'].get('data')})")
    if now.get("model_files") is not None and then.get("model_files") != now["model_files"]:
        old, new = then.get("model_files") or {}, now["model_files"]
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        found.append("the model's files changed (" + ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
                     + ")")
    return found


# -- predictions ----------------------------------------------------------------------------------


def read_predictions(path: Path) -> tuple[dict[tuple[int, int], dict], int]:
    """The finished samples of ``path`` by ``(item index, sample)`` (a run of one sample per item:
    sample 0), and how many lines were dropped: a last line without its newline (the run was killed
    while writing it) or a line that is not a sample's."""
    kept: dict[tuple[int, int], dict] = {}
    dropped = 0
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return kept, 0
    lines = text.split("\n")
    if lines[-1]:  # cut short: its sample runs again
        dropped += 1
    for line in lines[:-1]:
        try:
            rec = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("index"), int) and isinstance(rec.get("sample", 0), int):
            kept[(rec["index"], rec.get("sample", 0))] = rec
        elif line.strip():
            dropped += 1
    return kept, dropped


def _read_fingerprint(out: Path) -> dict | None:
    try:
        fp = json.loads((out / FINGERPRINT).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ResumeError(f"cannot resume {out}: its {FINGERPRINT} is unreadable ({exc})",
                          hint="start again without --resume (with --overwrite)") from None
    return fp if isinstance(fp, dict) else {}


def plan(out: Path, fp: dict, resume: bool, overwrite: bool) -> tuple[dict[tuple[int, int], dict], int]:
    """Before any work: the samples a run into ``out`` keeps (``resume``: the partial run's, by
    ``(item index, sample)``; else none) and the lines it drops. Raises :class:`ResumeError` when there is nothing to
    resume, when the partial run was another config or data, and when a fresh run would replace an
    unfinished one without ``overwrite``."""
    out = Path(out)
    if resume and overwrite:
        raise ResumeError("--resume finishes the run in the output folder; --overwrite clears it to start again",
                          hint="give one of them")
    kept, dropped = read_predictions(out / PREDICTIONS)
    if not resume:
        if kept and not (out / RESULTS[0]).exists() and not overwrite:
            raise ResumeError(f"{out} holds an unfinished eval ({len(kept)} sample(s) done): a new run would "
                              f"replace them",
                              hint="add --resume to finish it, --overwrite to start again, or give another --out")
        return {}, 0
    then = _read_fingerprint(out)
    if then is None:
        what = "no such folder" if not out.exists() else f"no {FINGERPRINT}: no eval started there"
        raise ResumeError(f"nothing to resume in {out} ({what})",
                          hint="run without --resume to start, or give --out the folder of the run to finish")
    diff = differences(then, fp)
    if then.get("version") != VERSION:
        diff.insert(0, f"its {FINGERPRINT} is version {then.get('version')}, this perceive writes {VERSION}")
    if diff:
        shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise ResumeError(f"cannot resume {out}: the partial run used another config or data: {shown}",
                          hint="resume with the partial run's settings, or start again without --resume (with "
                               "--overwrite, or another --out)")
    return kept, dropped


class PredictionLog:
    """``OUT/predictions.jsonl``, one line a finished sample, flushed as it is written. Opening it
    writes the fingerprint and the kept lines (a resumed run's, without a cut-short last line)
    and clears the results of an earlier run, which would not match."""

    def __init__(self, out: Path, fp: dict, kept: list[dict]):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        for name in RESULTS:
            (self.out / name).unlink(missing_ok=True)
        _atomic(self.out / FINGERPRINT, json.dumps(fp, indent=1))
        _atomic(self.out / PREDICTIONS, "".join(_line(r) for r in kept))
        self._f = (self.out / PREDICTIONS).open("a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        self._f.write(_line(rec))
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def results(self, result: dict, table: str) -> None:
        _atomic(self.out / RESULTS[0], json.dumps(result, indent=1))
        _atomic(self.out / RESULTS[1], table)


def _line(rec: dict) -> str:
    return json.dumps(rec, default=str) + "\n"


def _atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a kill leaves the old file or the new)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
