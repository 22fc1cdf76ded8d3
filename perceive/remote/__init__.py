"""The remote engine: drive a model served on any OpenAI-compatible chat endpoint (vLLM, SGLang,
``perceive serve``) with perceive's registry, graphs, protocols and traces
(``docs/how-to/use-a-served-model.md``). Needs the ``remote`` extra (the ``openai`` package)."""

from perceive.remote.session import RemoteLoop, data_url, loop_from_config

__all__ = ["RemoteLoop", "data_url", "loop_from_config"]
