"""A model folder's tokenizer, checked as a whole when the folder loads: its files are all there,
it has every token the model's ids name (the chat template's structural tokens, and the
perception tokens of ``perceive.json``) at those ids, and its chat template renders a turn with an
image in those tokens. A folder that fails is a :class:`~perceive.errors.ModelLoadError` naming
the missing or disagreeing piece, never a model that loads and then reads its prompts wrong
(without ``tokenizer_config.json``, transformers guesses another tokenizer class and other
special tokens, and the shipped model answers confidently wrong).
"""

from __future__ import annotations

from pathlib import Path

from perceive.errors import ModelLoadError
from perceive.model.checks import first_line
from perceive.model.config import VPTConfig
from perceive.vocabulary import REGION_END, REGION_START, Vocabulary

TOKENIZER_CONFIG = "tokenizer_config.json"
#: the files that hold a vocabulary: the fast tokenizer's, or a slow one's (BPE, sentencepiece)
VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")
#: the chat template's structural tokens (Qwen2-VL family), by their field in ``special``
STRUCTURAL = {"im_start": "<|im_start|>", "im_end": "<|im_end|>", "vision_start": "<|vision_start|>",
              "image_pad": "<|image_pad|>", "vision_end": "<|vision_end|>"}
RESTORE = "perceive's save_model and perceive train write every tokenizer file"
SHOWN = 4  # disagreements named in one message


def check_tokenizer_files(path: Path) -> bool:
    """Before anything loads: whether ``path`` has a tokenizer at all (False: none of its files,
    as in a paper checkpoint reduced to ``tokens.json``). One that is there but incomplete is a
    :class:`ModelLoadError` naming the missing file."""
    present = [n for n in (TOKENIZER_CONFIG, *VOCABULARY_FILES) if (path / n).exists()]
    if not present:
        return False
    if TOKENIZER_CONFIG not in present:
        raise ModelLoadError(
            f"{path} has {present[0]} but no {TOKENIZER_CONFIG}: without it the tokenizer's class and special tokens "
            "(unknown, end of text, padding) are guessed, and the model reads its prompts wrong",
            hint=f"copy the {TOKENIZER_CONFIG} saved with this model into the folder ({RESTORE})")
    if not any(n in present for n in VOCABULARY_FILES):
        raise ModelLoadError(
            f"{path} has {TOKENIZER_CONFIG} but no tokenizer.json (nor a slow tokenizer's vocab.json or "
            "tokenizer.model): the tokenizer's vocabulary is missing",
            hint=f"copy the tokenizer.json saved with this model into the folder ({RESTORE})")
    return True


def expected_tokens(cfg: VPTConfig, specs: dict) -> list[tuple[str, str, int]]:
    """``(field, token, id)`` for every token the model's config names by id: the structural tokens
    of ``special``, then the region grid's and each re-encode branch's (``specs``: the branches'
    :class:`~perceive.BranchSpec`, for their token strings)."""
    out = [(f"special.{field}", token, getattr(cfg.special, field)) for field, token in STRUCTURAL.items()]
    if cfg.region is not None:
        v = Vocabulary(len(cfg.region.x_ids))
        out += [("region.start_id", REGION_START, cfg.region.start_id),
                ("region.end_id", REGION_END, cfg.region.end_id)]
        out += [(f"region.x_ids[{i}]", v.x(i), t) for i, t in enumerate(cfg.region.x_ids)]
        out += [(f"region.y_ids[{i}]", v.y(i), t) for i, t in enumerate(cfg.region.y_ids)]
    for name, b in cfg.branches.items():
        spec = specs.get(name)
        if spec is None:
            continue
        out += [(f"branches.{name}.{k}", token, getattr(b, k))
                for k, token in zip(("start_id", "action_id", "end_id", "pad_id"), spec.tokens.all, strict=True)]
    return out


def token_disagreements(tokenizer, expected: list[tuple[str, str, int]], source: str) -> list[str]:
    """What differs between ``expected`` (:func:`expected_tokens`) and ``tokenizer``, as phrases
    naming each token and ``source``'s field: the tokens it lacks (it splits the string into
    pieces), in one phrase, then each it keeps at another id."""
    missing, moved = [], []
    for field, token, want in expected:
        got = tokenizer.encode(token, add_special_tokens=False)
        if got == [want]:
            continue
        shown = token if token.strip() else repr(token)
        if len(got) == 1 and got[0] != getattr(tokenizer, "unk_token_id", None):
            moved.append(f"{source} says {field} = {want}, but the tokenizer has {shown} at id {got[0]}")
        else:
            missing.append(f"{shown} ({field} = {want})")
    if missing:
        more = f" (+{len(missing) - SHOWN} more)" if len(missing) > SHOWN else ""
        missing = [f"the tokenizer has no token {', '.join(missing[:SHOWN])}{more}"]
    return missing + moved


def check_chat_template(tokenizer, cfg: VPTConfig, path: Path, source: str) -> None:
    """The tokenizer has a chat template, and a user turn with an image renders in the structural
    tokens ``cfg.special`` names (the loop finds its turn markup by rendering the same way)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"{path} has no chat template: no chat_template.jinja (or chat_template.json), and none in "
            f"{TOKENIZER_CONFIG}",
            hint="copy the chat_template.jinja saved with this model into the folder: perceive renders every turn "
                 "with the model's own template")
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]
    try:
        text = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja raises many kinds; each means the template is unusable
        raise ModelLoadError(f"{path}: the chat template cannot render a user turn with an image: "
                             f"{type(exc).__name__}: {first_line(exc)}",
                             hint="restore chat_template.jinja saved with this model") from None
    ids = set(tokenizer.encode(text, add_special_tokens=False))
    missing = [f"{token} ({source}: special.{field} = {getattr(cfg.special, field)})"
               for field, token in STRUCTURAL.items() if getattr(cfg.special, field) not in ids]
    if missing:
        raise ModelLoadError(
            f"{path}: the chat template does not agree with the tokenizer and {source}: a user turn with an image "
            f"renders without {', '.join(missing)}",
            hint="the chat template, the tokenizer files and perceive.json must be the ones saved together with this "
                 "model; restore chat_template.jinja from where the model came from")


def tokens_beyond_vocabulary(tokenizer, rows: int) -> list[str]:
    """The tokens ``tokenizer`` has at an id the model's embedding (``rows`` rows) has no row for,
    as ``'<|bogus|>' (id 5000)``: encoding one would index past the embedding."""
    return [f"{t!r} (id {i})" for t, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if i >= rows]


def check_tokenizer(tokenizer, cfg: VPTConfig, specs: dict, path: Path, source: str = "perceive.json",
                    rows: int | None = None) -> None:
    """After the folder loaded: the tokenizer, ``cfg`` (read from ``source``: ``perceive.json``, or
    ``config.json`` for a plain or paper checkpoint), the model's embedding (``rows``: its number of
    rows, when known) and the chat template agree; a :class:`ModelLoadError` naming each
    disagreement otherwise."""
    beyond = tokens_beyond_vocabulary(tokenizer, rows) if rows else []
    if beyond:
        more = f" (+{len(beyond) - SHOWN} more)" if len(beyond) > SHOWN else ""
        raise ModelLoadError(f"{path}: the tokenizer has token(s) the model has no embedding for (its vocabulary is "
                             f"{rows}): {', '.join(beyond[:SHOWN])}{more}",
                             hint=f"the tokenizer files must be the ones saved with this model: remove the added "
                                  f"token(s) from tokenizer.json and tokenizer_config.json, or restore them "
                                  f"({RESTORE})")
    expected = expected_tokens(cfg, specs)
    if cfg.special.newline is not None:
        expected.append(("special.newline", "\n", cfg.special.newline))
    problems = token_disagreements(tokenizer, expected, source)
    if problems:
        more = f" (+{len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise ModelLoadError(f"{path}: the tokenizer does not agree with {source}: {'; '.join(problems[:SHOWN])}{more}",
                             hint=f"the tokenizer files and {source} must be the ones saved together with this model: "
                                  f"restore them from where the model came from ({RESTORE})")
    check_chat_template(tokenizer, cfg, path, source)
