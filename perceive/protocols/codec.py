"""Token codecs: how a protocol's reader sees token ids (a special token's exact string, ordinary
ids decoded to text). A transformers tokenizer fits through :func:`codec_from_tokenizer`; tests and
data use :class:`DictCodec`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class TokenCodec(Protocol):
    """How the parser sees token ids. A transformers tokenizer fits through
    :func:`codec_from_tokenizer`."""

    def token(self, token_id: int) -> str:
        """The token's string form (special tokens exactly as written, e.g. ``<|x_3|>``)."""

    def text(self, token_ids: list[int]) -> str:
        """Ordinary ids decoded to text."""

@dataclass
class DictCodec:
    """A codec from an explicit id -> string table; unknown ids decode to ``""``."""

    table: Mapping[int, str]

    def token(self, token_id: int) -> str:
        return self.table.get(int(token_id), "")

    def text(self, token_ids: list[int]) -> str:
        return "".join(self.table.get(int(i), "") for i in token_ids)

def codec_from_tokenizer(tokenizer) -> TokenCodec:
    """Wrap a transformers tokenizer (``convert_ids_to_tokens`` / ``decode``)."""

    class _Tok:
        def token(self, token_id: int) -> str:
            return tokenizer.convert_ids_to_tokens(int(token_id)) or ""

        def text(self, token_ids: list[int]) -> str:
            return tokenizer.decode(token_ids, skip_special_tokens=False)

    return _Tok()


__all__ = ["DictCodec", "TokenCodec", "codec_from_tokenizer"]
