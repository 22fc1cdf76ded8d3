"""Every hook perceive calls. Plugins implement them with ``@perceive.hookimpl``.

Implementations may accept any subset of a hook's arguments (pluggy passes them by name),
so new arguments can be added later without breaking existing plugins. Each hook is
documented, with its exact signature, in ``docs/reference/hooks.md``; a test keeps the two
in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from perceive.actions import Action, ActionCall, ActionContext
    from perceive.encoders import EncoderSpec
    from perceive.protocols import ToolProtocol
    from perceive.reencode.branch_spec import BranchSpec
    from perceive.rewards import Reward

PROJECT = "perceive"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def perceive_register_actions() -> list[Action]:
    """Return the perception actions this plugin provides.

    Called once per plugin when the registry is built. Results are **collected**: every
    plugin's list is validated on its own (a well-formed :class:`perceive.Action`, a unique
    name, a trigger grammar that does not clash with another action's start token) and the
    valid ones are registered under the plugin's name. A plugin whose list is invalid is
    reported as broken and contributes nothing; the other plugins are not affected.
    """


@hookspec
def perceive_register_encoders() -> list[EncoderSpec]:
    """Return the vision encoders this plugin provides, as :class:`perceive.EncoderSpec`.

    Results are **collected** and validated like actions: names must be unique across all
    plugins. A re-encode action names the encoders it can use; config chooses one by name.
    """


@hookspec
def perceive_register_branches() -> list[BranchSpec]:
    """Return the re-encode branches this plugin provides, as :class:`perceive.BranchSpec`.

    A branch is the model-side half of a features action of the same name: its tokens, how to
    build its encoder and projector, its preprocessing and dataset layout, and (optionally) how it
    appears in the paper's checkpoints. The model, the collator, the trainer and the paper
    converter use only what is registered here. Results are **collected** and validated like
    actions: branch names and start tokens are unique across plugins, and a features action of
    the same name in the plugin must open and close its span with the branch's tokens.
    """


@hookspec
def perceive_register_protocols() -> list[ToolProtocol]:
    """Return the tool-call protocols this plugin provides, as :class:`perceive.protocols.ToolProtocol`.

    A protocol is how one model family calls perception actions: how the actions are declared
    to the model, how its stream is read into calls, how a tool's arguments map onto an action
    and a view, and how the observation turn is written. A run picks one by name
    (``LoopOptions.protocol``, config ``protocol:``). Results are **collected** and validated like
    actions: names are unique across plugins and the built-ins (``vpt``, ``hermes_json``,
    ``mini_o3_grounding``).
    """


@hookspec
def perceive_register_rewards() -> list[Reward]:
    """Return the reward functions this plugin provides, as :class:`perceive.rewards.Reward`.

    A reward scores RL rollouts (``perceive train`` with ``method: grpo``; a run names rewards
    and their weights in ``rewards:``). Its function has TRL's reward signature plus the trace:
    ``fn(prompts, completions, **kwargs) -> list[float | None]``, ``kwargs`` holding ``answer``,
    ``trace``, ``raw``, ``finish_reason``, ``completion_ids`` and ``box`` per rollout (see
    :mod:`perceive.rewards`). Results are **collected** and validated; names are unique across
    plugins and the built-ins (``exact_match``, ``anls``, ``format``, ``tool_bonus``,
    ``hop_cost``, ``crop_iou``).
    """


@hookspec(firstresult=True)
def perceive_run_action(action: Action, call: ActionCall, context: ActionContext) -> Any:
    """Run one perception call and return its observation.

    **firstresult**: the first non-``None`` result wins and later implementations are not
    called. perceive's own implementation runs last (``trylast``) and calls
    ``action.run(call, context)``. A cache plugin returns a stored observation earlier; a
    tracing or timing plugin wraps the call with ``@hookimpl(wrapper=True)`` and ``yield``.
    Exceptions propagate to the dispatcher, which records them in the trace.
    """


@hookspec
def perceive_before_action(action: Action, call: ActionCall, context: ActionContext) -> None:
    """Called before each perception call is run. Return values are ignored.

    An exception raised here is recorded as the call's failure and the call is not run.
    """


@hookspec
def perceive_after_action(
    action: Action,
    call: ActionCall,
    context: ActionContext,
    observation: Any,
    error: BaseException | None,
    elapsed_ms: float,
) -> None:
    """Called after each perception call, whether it succeeded or not. Return values are ignored.

    ``observation`` is the normalised observation (a tuple of views or of features) or ``None``
    when the call failed; ``error`` is the exception in that case. ``elapsed_ms`` is the time
    spent in ``perceive_run_action``. Exceptions raised here are logged and swallowed: an
    observer must never fail a sample.
    """


@hookspec
def perceive_before_node(graph: str, node: str, kind: str, state: dict) -> None:
    """Called when a graph run enters a node (for a ``generate`` node: when generation there
    begins). ``state`` holds ``hops``, ``generated_tokens``, ``answered``, ``last_action`` and
    ``visits`` of the sample. Return values are ignored; exceptions are logged and swallowed.
    """


@hookspec
def perceive_after_node(graph: str, node: str, kind: str, state: dict, outcome: str) -> None:
    """Called when a graph run leaves a node. ``outcome`` says what happened: ``"-> NODE"`` for a
    route, ``"dispatch ACTION"`` / ``"force ACTION"`` for an action, ``"call ACTION"`` or
    ``"answer"`` for a generate node, ``"end"`` for an answer node. Return values are ignored;
    exceptions are logged and swallowed.
    """
