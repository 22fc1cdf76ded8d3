"""Which tool-call protocol a model speaks, when the run does not say (``protocol: auto``).

* A model whose ``perceive.json`` names its ``protocol`` (what it was trained to speak, e.g.
  ``models/toolcall``: ``hermes_json``) speaks that.
* A perceive/VPT model (perception branches or the region grid in ``perceive.json``, or one of
  the paper's checkpoints) speaks ``vpt``.
* Otherwise the chat template decides, by rendering probe conversations with it (not by
  reading its source): a template that declares ``tools`` in a ``<tools></tools>`` block and
  writes assistant calls as ``<tool_call>`` is ``hermes_json``; ``coordinates`` is
  ``relative_1000`` for Qwen3-VL (its documented convention) and ``absolute`` otherwise, and the
  observation turn (``response``) follows how the template wraps a tool message.
* Anything else (a stock Qwen2.5-VL template has no tool section; Mini-o3 and DeepEyes ship the
  stock template) is ambiguous: a :class:`~perceive.errors.ConfigError` that names the protocols
  and how to choose one.
"""

from __future__ import annotations

from typing import Any

from perceive.errors import ConfigError

AUTO = "auto"
_TOOL = "perceive_probe_tool"
_REPLY = "\u00a7R\u00a7"
RELATIVE_1000 = ("qwen3_vl", "qwen3_vl_moe")


def _render(tokenizer, messages, **kw) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    except Exception:  # a template that cannot render the probe declares no such thing
        return None


def template_protocol(tokenizer, model_type: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """``(name, options)`` the chat template of ``tokenizer`` declares, or None when it declares
    no tool-call format perceive knows."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    tool = {"type": "function", "function": {"name": _TOOL, "description": "probe",
                                             "parameters": {"type": "object", "properties": {}}}}
    user = [{"role": "user", "content": "q"}]
    declared = _render(tokenizer, user, tools=[tool], add_generation_prompt=True)
    if not declared or "<tools>" not in declared or _TOOL not in declared:
        return None
    call = {"type": "function", "function": {"name": _TOOL, "arguments": {}}}
    said = _render(tokenizer, user + [{"role": "assistant", "content": "", "tool_calls": [call]}], tools=[tool])
    if not said or "<tool_call>" not in said:
        return None
    options: dict[str, Any] = {}
    if model_type in RELATIVE_1000:
        options["coordinates"] = "relative_1000"
    replied = _render(tokenizer, user + [{"role": "assistant", "content": "", "tool_calls": [call]},
                                         {"role": "tool", "content": _REPLY}], tools=[tool])
    if replied and f"\n<tool_response>\n{_REPLY}\n</tool_response>" in replied:
        options["response"] = "qwen3"
    elif replied and f"<tool_response>{_REPLY}</tool_response>" in replied:
        options["response"] = "deepeyes"
    return "hermes_json", options


def is_vpt_model(model) -> bool:
    """Whether ``model`` carries perceive's perception vocabulary (branches or the region grid)."""
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "branches", None)) or getattr(cfg, "region", None) is not None


def model_type(model) -> str | None:
    base = getattr(model, "base", None)
    return getattr(getattr(base, "config", None), "model_type", None)


def detect_protocol(model, names: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of the protocol ``model`` speaks; a :class:`ConfigError` when its files
    do not say. ``names``: the installed protocols (for the message)."""
    declared = getattr(getattr(model, "config", None), "protocol", None)
    if isinstance(declared, dict) and declared.get("name"):  # perceive.json says what it was trained on
        return declared["name"], dict(declared.get("options") or {})
    if is_vpt_model(model):
        return "vpt", {}
    found = template_protocol(getattr(model, "tokenizer", None), model_type(model))
    if found is not None:
        return found
    shown = ", ".join(names or ["vpt", "hermes_json", "mini_o3_grounding"])
    raise ConfigError(
        f"cannot tell which tool-call protocol the model speaks: it has no perception tokens (it is not a "
        f"perceive/VPT model) and its chat template declares no tools (no <tools></tools> section, no "
        f"<tool_call>); installed protocols: {shown}",
        hint="say it in the run config, e.g. `protocol: hermes_json` (Qwen2.5-VL, DeepEyes: absolute pixels), "
             "`protocol: {name: hermes_json, options: {coordinates: relative_1000}}` (Qwen3-VL), "
             "`protocol: mini_o3_grounding` (Mini-o3), or `protocol: vpt` (no tool calls: the model answers "
             "directly); `perceive protocols list` shows each one's options "
             "(docs/how-to/use-a-tool-calling-model.md)")


def choose_protocol(registry, name: str, options: dict[str, Any] | None, model):
    """The configured protocol the loop runs: ``name`` from ``registry`` with ``options``, or,
    for ``auto``, the detected one (the run's ``options`` over the detected ones). Naming the
    protocol the model's ``perceive.json`` declares keeps that file's options under the run's (a
    bare ``protocol: hermes_json`` must not drop the options the model was trained with)."""
    if name == AUTO:
        name, found = detect_protocol(model, sorted(getattr(registry, "protocols", {}) or {}) or None)
        options = {**found, **(options or {})}
    else:
        declared = getattr(getattr(model, "config", None), "protocol", None)
        if isinstance(declared, dict) and declared.get("name") == name:
            options = {**(declared.get("options") or {}), **(options or {})}
    return registry.protocol(name, options)


__all__ = ["AUTO", "choose_protocol", "detect_protocol", "is_vpt_model", "template_protocol"]
