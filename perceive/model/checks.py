"""Checking a model folder's files before (and while) :mod:`perceive.model.checkpoint` loads
them: the JSON files, the ``.safetensors`` headers, ``perceive.json`` against the base model, and
the tokens the tokenizer files carry. Each problem is a :class:`~perceive.errors.ModelLoadError`
or, for a malformed config file (``config.json``, ``perceive.json``), a
:class:`~perceive.errors.ConfigError`, naming the file and what to do.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from perceive.errors import ConfigError, ModelLoadError, PerceiveError
from perceive.model.config import VPTConfig

CONFIG_FILE = "perceive.json"
WEIGHTS_FILE = "perception.safetensors"
#: the largest ``.safetensors`` header the safetensors library itself accepts (100 MB)
MAX_SAFETENSORS_HEADER = 100_000_000


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first line of an exception's message, for a one-line error; a first line that ends in a
    colon (``... from one of:``, the list on the lines after it) keeps what follows, joined."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = " ".join(lines) if lines[0].endswith(":") else lines[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_json(file: Path, what: str = "config", error: type[PerceiveError] = ConfigError) -> dict[str, Any]:
    """A JSON object from ``file``; anything else is an ``error`` (a :class:`ConfigError` unless
    told) naming the file."""
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise error(f"cannot read {file}: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{file} is not valid JSON: {exc}",
                    hint=f"fix the {what} file, or restore it from where the model came from") from None
    if not isinstance(data, dict):
        raise error(f"{file} must hold a JSON object, got {type(data).__name__}",
                    hint=f"restore the {what} file from where the model came from")
    return data


def check_safetensors(file: Path) -> None:
    """Read a ``.safetensors`` file's header and check that the file holds every tensor it lists,
    so a truncated or corrupt file is named before anything is loaded. A header length over
    :data:`MAX_SAFETENSORS_HEADER` (a corrupt first 8 bytes) is refused without reading it."""
    hint = ("the file is incomplete or damaged (an interrupted copy or download?); copy it again from where "
            "the model came from")
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{file} is truncated: {size} bytes, not even a safetensors header", hint=hint)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_SAFETENSORS_HEADER:
                raise ModelLoadError(f"{file} is corrupt or not a safetensors file: its header claims {n:,} bytes, "
                                     f"over safetensors' limit of {MAX_SAFETENSORS_HEADER:,}", hint=hint)
            if n > size - 8:
                raise ModelLoadError(f"{file} is truncated or not a safetensors file: its header claims {n} bytes "
                                     f"but the file has {size}", hint=hint)
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelLoadError(f"{file} is corrupt: its safetensors header is not valid JSON", hint=hint) from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{file} is corrupt: its safetensors header is not a JSON object", hint=hint)
    try:
        ends = [int(v.get("data_offsets", [0, 0])[1]) for k, v in header.items()
                if k != "__metadata__" and isinstance(v, dict)]
    except (TypeError, ValueError, IndexError, KeyError):
        raise ModelLoadError(f"{file} is corrupt: its safetensors header has a tensor without valid data_offsets",
                             hint=hint) from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise ModelLoadError(f"{file} is truncated: it has {size:,} bytes, its header lists tensors up to byte "
                             f"{need:,}", hint=hint)


def read_vpt_config(path: str | Path) -> VPTConfig:
    """``perceive.json`` of a model folder, validated; a :class:`ConfigError` naming the file and
    each wrong field otherwise."""
    from pydantic import ValidationError

    file = Path(path) / CONFIG_FILE
    data = read_json(file, CONFIG_FILE)
    try:
        return VPTConfig.model_validate(data)
    except ValidationError as exc:
        from perceive.config import format_validation_error

        raise ConfigError(format_validation_error(exc, str(file), None, VPTConfig),
                          hint=f"{CONFIG_FILE} is written by perceive (save_model, perceive convert, perceive train); "
                               "restore the one saved with this model, or fix the fields named") from None


def check_ids(cfg: VPTConfig, base, file: Path) -> None:
    """perceive.json's sizes and token ids must fit the base model it sits beside."""
    text = getattr(base.config, "text_config", base.config)
    hidden, vocab = getattr(text, "hidden_size", None), getattr(text, "vocab_size", None)
    if hidden is not None and cfg.hidden_size != hidden:
        raise ConfigError(f"{file}: hidden_size is {cfg.hidden_size} but the model in config.json has {hidden}",
                          hint=f"set hidden_size to {hidden}, or restore the {CONFIG_FILE} saved with this model")
    if vocab:
        ids = {**cfg.special.model_dump(exclude={"eos", "newline"}), "newline": cfg.special.newline}
        ids.update({f"eos[{i}]": v for i, v in enumerate(cfg.special.eos)})
        if cfg.region is not None:
            ids.update({"region.start_id": cfg.region.start_id, "region.end_id": cfg.region.end_id})
            ids.update({f"region.x_ids[{i}]": v for i, v in enumerate(cfg.region.x_ids)})
            ids.update({f"region.y_ids[{i}]": v for i, v in enumerate(cfg.region.y_ids)})
        for name, b in cfg.branches.items():
            ids.update({f"branches.{name}.{k}": getattr(b, k) for k in ("start_id", "action_id", "end_id", "pad_id")})
        bad = [f"{k}={v}" for k, v in ids.items() if v is not None and not 0 <= v < vocab]
        if bad:
            raise ConfigError(f"{file}: token id(s) outside the model's vocabulary of {vocab}: {', '.join(bad[:6])}",
                              hint=f"restore the {CONFIG_FILE} saved with this model")
    if cfg.region is not None and (not cfg.region.x_ids or len(cfg.region.x_ids) != len(cfg.region.y_ids)):
        raise ConfigError(f"{file}: region has {len(cfg.region.x_ids)} x ids and {len(cfg.region.y_ids)} y ids",
                          hint="the region grid needs as many x ids as y ids, at least one")


def token_table(path: Path) -> dict[str, int]:
    """Token string -> id from ``tokens.json`` (its ``special_tokens``) and ``tokenizer.json`` (its
    ``added_tokens``) in ``path``, each read once; a file that is not JSON, or not laid out so, is
    a :class:`ModelLoadError` naming it (as :func:`perceive.model.paper.token_table` reads them,
    without its raw ``JSONDecodeError``)."""
    table: dict[str, int] = {}
    for name, key in (("tokens.json", "special_tokens"), ("tokenizer.json", "added_tokens")):
        file = path / name
        if not file.exists():
            continue
        entries = read_json(file, name, ModelLoadError).get(key) or ({} if key == "special_tokens" else [])
        try:
            if key == "special_tokens":
                table.update({str(k): int(v) for k, v in entries.items()})
            else:
                table.update({t["content"]: int(t["id"]) for t in entries})
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{file} is damaged: its {key} are not a table of tokens and ids "
                                 f"({type(exc).__name__}: {first_line(exc)})",
                                 hint=f"restore {name} from where the model came from") from None
    return table


def perception_tokens(path: Path, table: dict[str, int] | None = None) -> list[str]:
    """The perceive vocabulary tokens (region, grid and zoom tokens, and those of every installed
    action and re-encode branch) that the tokenizer files in ``path`` carry; ``table``: their
    :func:`token_table`, when already read."""
    from perceive.plugins import get_registry
    from perceive.vocabulary import GRID_TOKEN_RE, REGION_END, REGION_START

    tokens = set(token_table(path) if table is None else table)
    tc = path / "tokenizer_config.json"
    if tc.exists():
        decoder = read_json(tc, tc.name, ModelLoadError).get("added_tokens_decoder") or {}
        if isinstance(decoder, dict):
            tokens.update(t.get("content", "") for t in decoder.values() if isinstance(t, dict))
    reg = get_registry()
    installed = [*(t for r in reg.branches.values() for t in r.obj.tokens.all),
                 *(t for r in reg.actions.values() if r.obj.grammar is not None for t in r.obj.grammar.tokens)]
    known = list(dict.fromkeys([REGION_START, REGION_END, *installed, "<|zoom_start|>", "<|zoom_end|>"]))
    known = [t for t in known if not GRID_TOKEN_RE.fullmatch(t)]
    grid = sorted((t for t in tokens if GRID_TOKEN_RE.fullmatch(t)), key=lambda t: (t[2], int(t[4:-2])))
    return [t for t in known if t in tokens] + grid
