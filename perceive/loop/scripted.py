"""A loop policy that makes the model emit given tokens: scripted perception spans.

Production code uses it: the evaluator's oracle mode (``oracle_spans``) forces each item's own
perception span before the model answers; the loop benchmark drives untrained models with it. Tests use it
for the same reason. The rest of the loop (KV cache, dispatch, injection) is real.
"""

from __future__ import annotations

from collections.abc import Sequence


class ScriptedPolicy:
    """``scripts[i]`` is the list of tokens (strings or ids) sample ``i`` emits first; after its
    script, and for samples without one, the model chooses. Pass it as
    ``PerceptionLoop(model, policy=ScriptedPolicy(tokenizer, scripts))``."""

    def __init__(self, tokenizer, scripts: dict[int, Sequence]):
        def ids(seq):
            return [t if isinstance(t, int) else tokenizer.convert_tokens_to_ids(t) for t in seq]

        self.scripts = {i: ids(s) for i, s in scripts.items()}

    def __call__(self, index: int, generated: list[int], logits) -> int | None:
        script = self.scripts.get(index)
        if script and len(generated) < len(script):
            return script[len(generated)]
        return None


def span_tokens(tokenizer, text: str) -> list[str]:
    """Tokens of ``text`` as the tokenizer splits it (perception tokens stay whole)."""
    return tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))


__all__ = ["ScriptedPolicy", "span_tokens"]
