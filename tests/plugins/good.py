"""A well-formed plugin used by the registry tests: one view action, one encoder."""

from pydantic import BaseModel, ConfigDict

from perceive import Action, Box, EncoderSpec, TriggerGrammar, hookimpl


class HalfArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    side: str = "left"


class LeftHalf(Action):
    name = "left_half"
    grammar = TriggerGrammar(start="<|half_start|>", end="<|half_end|>")
    Args = HalfArgs
    observation = "view"

    def run(self, call, context):
        w, h = context.frame.size
        return context.crop_root(Box(0, 0, max(1, w // 2), h, context.frame.id))


class TinyEncoder:
    def encode(self, image):
        import torch

        return torch.ones(4, 8)


@hookimpl
def perceive_register_actions():
    return [LeftHalf()]


@hookimpl
def perceive_register_encoders():
    return [EncoderSpec(name="ones", family="test", layout="tokens", feature_dim=8,
                        build=lambda **kw: TinyEncoder(), build_tiny=TinyEncoder, placeholders=4)]
