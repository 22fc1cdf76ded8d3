"""Deprecated: moved into :mod:`perceive.protocols` (every name below is importable from there).
The call types are in :mod:`perceive.protocols.calls`, the token codecs in
:mod:`perceive.protocols.codec`, the VPT stream parser in :mod:`perceive.protocols.vpt_stream`.
Importing a name from here works for one release and warns."""

from perceive.deprecation import moved_names

__getattr__, __dir__ = moved_names(__name__, {
    **dict.fromkeys(["Event", "ParseError", "ParseErrorKind", "PerceptionCall"], "perceive.protocols.calls"),
    **dict.fromkeys(["DictCodec", "TokenCodec", "codec_from_tokenizer"], "perceive.protocols.codec"),
    **dict.fromkeys(["StreamParser", "parse_tokens", "split_text"], "perceive.protocols.vpt_stream"),
})
__all__ = __dir__()  # a star import still works: each name comes through its warning
