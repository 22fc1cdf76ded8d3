"""perceive as an lmms-eval model: ``lmms-eval --model perceive --model_args model=DIR,...``.

lmms-eval finds out-of-tree models through the ``lmms_eval.models`` entry-point group; the entry
point names :data:`MANIFEST`, which points lmms-eval at the chat model class
(:class:`perceive.eval.lmms.model.PerceiveLMM`, imported only when a run asks for it). lmms-eval
imports this module while its own ``lmms_eval.models`` is half initialised, so it imports nothing
but the manifest's type: no torch, no model code.
"""

from lmms_eval.models.registry_v2 import ModelManifest

#: the ``perceive`` model of lmms-eval (``pip install "perceive[lmms-eval]"`` registers it)
MANIFEST = ModelManifest(model_id="perceive", chat_class_path="perceive.eval.lmms.model.PerceiveLMM")

__all__ = ["MANIFEST"]
