"""The ${name} perception action (a perceive plugin).

Span: ${start} <|${name}_qK|> ${end}, K in 0..3. Shows the chosen quadrant of the image the
call targets (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) as a new view.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from perceive import Action, ActionCall, ActionContext, Box, SpanError, TriggerGrammar, View, hookimpl


class QuadrantArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    quadrant: int = Field(ge=0, le=3)


class Quadrant(Action):
    name = "${name}"
    description = "Show one quadrant of the image as a new view."
    grammar = TriggerGrammar(
        start="${start}",
        end="${end}",
        inner=tuple(f"<|${name}_q{k}|>" for k in range(4)),
    )
    Args = QuadrantArgs
    observation = "view"

    def parse(self, pieces):
        chosen = [p for p in pieces if p in self.grammar.inner]
        if len(chosen) != 1 or len([p for p in pieces if p.strip()]) != 1:
            raise SpanError("invalid_args", f"expected exactly one quadrant token, got {list(pieces)}")
        return QuadrantArgs(quadrant=self.grammar.inner.index(chosen[0]))

    def run(self, call: ActionCall, context: ActionContext) -> View:
        w, h = context.frame.width, context.frame.height
        col, row = call.args.quadrant % 2, call.args.quadrant // 2
        # Boxes are in the target view's pixel frame; crop_root maps them to the original.
        box = Box(col * w // 2, row * h // 2, w if col else max(1, w // 2),
                  h if row else max(1, h // 2), frame=context.frame.id)
        return context.crop_root(box, label=f"quadrant {call.args.quadrant}")

    def examples(self):
        return [QuadrantArgs(quadrant=k) for k in range(4)]


@hookimpl
def perceive_register_actions():
    return [Quadrant()]
