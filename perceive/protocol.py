"""Deprecated: moved into :mod:`perceive.protocols`. The call types (``PerceptionCall``,
``ParseError``, ``ParseErrorKind``, ``Event``) are in :mod:`perceive.protocols.calls`, the token
codecs (``TokenCodec``, ``DictCodec``, ``codec_from_tokenizer``) in :mod:`perceive.protocols.codec`,
the VPT stream parser (``StreamParser``, ``parse_tokens``, ``split_text``) in
:mod:`perceive.protocols.vpt_stream`; all are importable from :mod:`perceive.protocols`. Importing
a name from here still works for one release and warns."""

from __future__ import annotations

import importlib
import warnings

_MOVED = {
    "Event": "perceive.protocols.calls",
    "ParseError": "perceive.protocols.calls",
    "ParseErrorKind": "perceive.protocols.calls",
    "PerceptionCall": "perceive.protocols.calls",
    "DictCodec": "perceive.protocols.codec",
    "TokenCodec": "perceive.protocols.codec",
    "codec_from_tokenizer": "perceive.protocols.codec",
    "StreamParser": "perceive.protocols.vpt_stream",
    "parse_tokens": "perceive.protocols.vpt_stream",
    "split_text": "perceive.protocols.vpt_stream",
}


def __getattr__(name: str):
    # imported lazily: perceive.protocols imports the modules this one forwards to
    if name not in _MOVED:
        raise AttributeError(f"module 'perceive.protocol' has no attribute {name!r}")
    warnings.warn(f"perceive.protocol is deprecated: import {name} from {_MOVED[name]} (or perceive.protocols)",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)


def __dir__() -> list[str]:
    return sorted(_MOVED)


__all__: list[str] = []  # a star import must not pull every name through the warning
