"""``perceive serve``: an OpenAI-compatible HTTP endpoint over a perception loop
(``docs/how-to/serve.md``). Needs the ``serve`` extra: ``pip install 'perceive[serve]'``."""

from perceive.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
