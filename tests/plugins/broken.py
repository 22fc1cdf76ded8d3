"""Deliberately broken plugins, one fault each, for the load-time validation tests."""

from pydantic import BaseModel

from perceive import Action, TriggerGrammar, hookimpl
from perceive.regions import GridSpanAction


class _View(Action):
    grammar = TriggerGrammar(start="<|b_start|>", end="<|b_end|>")
    observation = "view"

    def run(self, call, context):
        return context.crop_root(context.frame.box())


class DuplicateName:
    """Provides an action named 'region_select', which the reference plugin owns."""

    class RS(GridSpanAction):
        name = "region_select"
        start_token = "<|dup_start|>"
        end_token = "<|dup_end|>"

        def run(self, call, context):
            return context.crop_root(context.frame.box())

    @hookimpl
    def perceive_register_actions(self):
        return [self.RS()]


class StartClash:
    """A new name, but the region start token is taken."""

    class A(_View):
        name = "clash"
        grammar = TriggerGrammar(start="<|region_token_start|>", end="<|clash_end|>")

    @hookimpl
    def perceive_register_actions(self):
        return [self.A()]


class NotPydanticArgs:
    class A(_View):
        name = "bad_args"
        Args = dict  # not a pydantic model

    @hookimpl
    def perceive_register_actions(self):
        return [self.A()]


class NoRun:
    class A(Action):
        name = "no_run"
        grammar = TriggerGrammar(start="<|nr_start|>", end="<|nr_end|>")

    @hookimpl
    def perceive_register_actions(self):
        return [self.A()]


class NotAnAction:
    @hookimpl
    def perceive_register_actions(self):
        return [{"name": "dict_action"}]


class NotAList:
    @hookimpl
    def perceive_register_actions(self):
        return _View()


class RegisterRaises:
    @hookimpl
    def perceive_register_actions(self):
        raise RuntimeError("boom while registering")


class UnknownHook:
    """A typo: perceive_register_action (no s)."""

    @hookimpl
    def perceive_register_action(self):
        return []


class WrongHookArgs:
    """An implementation asking for an argument the hook does not have."""

    @hookimpl
    def perceive_before_action(self, action, call, banana):
        pass


class BadEncoder:
    @hookimpl
    def perceive_register_encoders(self):
        from perceive import EncoderSpec

        return [EncoderSpec(name="Bad Name", family="x", layout="cube", feature_dim=1, build=None)]


class ArgsModel(BaseModel):
    x: int = 0
