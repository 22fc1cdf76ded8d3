"""A text action for the loop tests: ``caption`` reads nothing, it writes what it was given (the
option ``say``) with the box of the view it was called on."""

from pydantic import BaseModel, ConfigDict

from perceive import Action, Text, TriggerGrammar, hookimpl


class CaptionOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    say: str = "a photo"


class Caption(Action):
    name = "caption"
    grammar = TriggerGrammar(start="<|caption_start|>", end="<|caption_end|>")
    observation = "text"
    Options = CaptionOptions

    def run(self, call, context):
        say = CaptionOptions.model_validate(context.options).say
        region = context.root_box(context.frame.box())
        return Text(say, context.frame, boxes=((region, say),))


@hookimpl
def perceive_register_actions():
    return [Caption()]
