"""The remote engine: drive a model served on any OpenAI-compatible chat endpoint (vLLM, SGLang,
``perceive serve``) with perceive's registry, graphs, protocols and traces
(``docs/how-to/use-a-served-model.md``). Needs the ``remote`` extra (the ``openai`` package)."""

from perceive.deprecation import moved_names
from perceive.remote.session import RemoteLoop, data_url

# loop_from_config builds a local loop as well: it lives above both, in perceive.loop_factory
__getattr__, __dir__ = moved_names(__name__, {"loop_from_config": "perceive.loop_factory"})

__all__ = ["RemoteLoop", "data_url"]
