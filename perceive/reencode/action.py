"""Vision Re-Encoding actions (the paper's second token family, vpt-paper.md §1.1, §2.5).

The span is ``start action end`` (a :class:`~perceive.reencode.branch_spec.BranchTokens`, in the paper's
naming ``<|F_action_start|> <|F_action|> <|F_action_end|>``). The action encodes the target view
with a vision encoder and returns :class:`Features`; the model's branch of the same name (a
:class:`~perceive.reencode.branch_spec.BranchSpec` its plugin registers) projects them, conditioned on the control
hidden state (the last-layer state at the span's start token), and the loop places them at
``num_placeholders`` copies of the branch's pad token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel

from perceive.actions import Action, ActionCall, ActionContext, SpanError, TriggerGrammar
from perceive.encoders import FeatureLayout, layout_mismatch
from perceive.errors import ActionInputError, EncoderUnavailableError
from perceive.observations import Features
from perceive.reencode.branch_spec import BranchTokens
from perceive.strict import FrozenStrictModel


class ReencodeArgs(FrozenStrictModel):
    """``encoder``: registry name to use; ``None`` means the action's configured default."""

    encoder: str | None = None


class ReencodeAction(Action):
    """Base for re-encode actions. Subclasses set ``name``, ``tokens`` (the branch's
    :class:`~perceive.reencode.branch_spec.BranchTokens`), ``encoders`` (the first is the default) and, when
    the branch's projector takes ``(C, H, W)`` maps, ``layout = FeatureLayout.MAP``.

    :meth:`run` returns :class:`Features` whose ``tensor`` is the encoder's output for the target
    view (one image: ``(T, C)`` or ``(C, H, W)``) and whose ``num_placeholders`` is the encoder
    spec's ``placeholders``, or ``tensor.shape[0]`` when that is None (see
    :class:`~perceive.encoders.EncoderSpec`)."""

    Args: ClassVar[type[BaseModel]] = ReencodeArgs
    observation: ClassVar[str] = "features"
    tokens: ClassVar[BranchTokens]
    #: the feature layout the branch's projector takes: ``FeatureLayout.TOKENS`` (N, C) or
    #: ``FeatureLayout.MAP`` (C, H, W); each encoder it uses must give the same
    layout: ClassVar[FeatureLayout] = FeatureLayout.TOKENS

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # a plugin may write the plain string ("map"); anything else fails its import, which keeps
        # the plugin out of the registry with this message
        try:
            cls.layout = FeatureLayout(cls.layout)
        except ValueError:
            raise TypeError(f"{cls.__name__}.layout is {cls.layout!r}: set FeatureLayout.TOKENS (its projector takes "
                            "(N, C) features) or FeatureLayout.MAP ((C, H, W)), from perceive.encoders") from None

    def __init__(self):
        start, action, end, pad = self.tokens.all
        self.grammar = TriggerGrammar(start=start, end=end, inner=(action,))
        self.action_token = action
        self.placeholder = pad

    def parse(self, pieces: Sequence[str]) -> ReencodeArgs:
        # The paper masks the middle token's label, so models may emit start/end alone;
        # the loop forces the action token. Either form is a well-formed call.
        extra = [p for p in pieces if p != self.action_token and p.strip()]
        if extra:
            raise SpanError("unexpected_token",
                            f"a {self.name} span holds only {self.action_token}, got {extra}")
        if pieces.count(self.action_token) > 1:
            raise SpanError("unexpected_token", f"{self.action_token} repeated")
        return ReencodeArgs()

    def run(self, call: ActionCall, context: ActionContext) -> Features:
        # any registered encoder whose layout the projector takes; ``encoders`` are the defaults
        opts = context.options  # the action's Options instance (EncoderOptions); a dict where it declares none
        configured = opts.get("encoder") if isinstance(opts, dict) else getattr(opts, "encoder", None)
        name = call.args.encoder or configured or self.encoders[0]
        if context.encoders is None:
            raise EncoderUnavailableError(f"action {self.name!r} needs an encoder hub",
                                          hint="run it through a perceive session or model")
        spec = context.encoders.spec(name)
        if spec.layout != self.layout:
            message, hint = layout_mismatch(self, name, spec.layout, context.encoders.specs)
            raise ActionInputError(message, hint=hint)
        tensor = context.encoders.features(name, context.image)
        n = spec.placeholders if spec.placeholders is not None else int(tensor.shape[0])
        return Features(tensor=tensor, encoder=name, placeholder=self.placeholder,
                        num_placeholders=n, source=context.frame)

    def examples(self) -> list[ReencodeArgs]:
        return [ReencodeArgs()]
