"""Conversation layout, taken from the base model's own chat template.

The prompt is rendered by ``tokenizer.apply_chat_template``. For the perception turns appended
online (vpt-paper.md §1.7: the end of the assistant turn, a user turn holding the new image or
the feature placeholders, the start of the next assistant turn), the wrapper strings are found
by rendering a probe conversation with that same template, so a real Qwen2-VL checkpoint and
the paper's checkpoints see exactly the layout they were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from perceive.errors import ModelLoadError

_A, _U, _Q = "\u00a7A\u00a7", "\u00a7U\u00a7", "\u00a7Q\u00a7"


@dataclass
class ChatLayout:
    tokenizer: object
    system: str | None = None

    def __post_init__(self):
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ModelLoadError("the model's tokenizer has no chat template; perceive renders every turn with it",
                                 hint="give the tokenizer the template the model was trained with (chat_template.jinja "
                                      "in its folder)")
        q = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
        base = self._render(q + [{"role": "assistant", "content": _A}], generation=False)
        probe = self._render(q + [{"role": "assistant", "content": _A},
                                  {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _U}]}],
                             generation=True)
        if not probe.startswith(base[:base.index(_A)]):
            raise ModelLoadError("the model's chat template is not prefix-stable (a finished assistant turn renders "
                                 "otherwise once a user turn follows it); perceive appends observation turns to the "
                                 "running conversation and needs it to be",
                                 hint="use the chat template the model was trained with")
        cont = probe[probe.index(_A) + len(_A):]
        before_user, after_user = cont.split(_U)
        # the image markup is whatever the template put between the user header and the text
        img_probe = self._render([{"role": "user", "content": [{"type": "text", "text": _U}]}], generation=False)
        header_end = img_probe[:img_probe.index(_U)]
        head = header_end[header_end.rindex("user"):]  # "user\n"
        i = before_user.rindex(head) + len(head)
        self.turn_open = before_user[:i]  # "<|im_end|>\n<|im_start|>user\n"
        self.image_markup = before_user[i:]  # "<|vision_start|><|image_pad|><|vision_end|>"
        self.turn_close = after_user  # "<|im_end|>\n<|im_start|>assistant\n"

    def _render(self, messages, generation: bool) -> str:
        if self.system is not None:
            messages = [{"role": "system", "content": self.system}] + messages
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt(self, question: str, image_tokens: int, extra_blocks: list[str] = (),
               image_pad: str = "<|image_pad|>") -> list[int]:
        """Ids of the first turn: system, user (the image, any ``extra_blocks`` of already expanded
        view markup, then the question), assistant header. The template's image pad is expanded to
        ``image_tokens`` copies."""
        content = [{"type": "image"}] + [{"type": "text", "text": b} for b in extra_blocks]
        content.append({"type": "text", "text": _Q})
        text = self._render([{"role": "user", "content": content}], generation=True)
        head, tail = text.replace(image_pad, image_pad * image_tokens, 1).split(_Q)
        # the question is the user's text: a control-token literal in it ("<|image_pad|>") stays text
        q = self.tokenizer.encode(question, add_special_tokens=False, split_special_tokens=True)
        return self.encode(head) + q + self.encode(tail)

    def observation_turn(self, blocks: list[str]) -> list[int]:
        """Ids closing the assistant turn, opening a user turn holding ``blocks`` (already expanded
        markup strings), and opening the next assistant turn."""
        return [i for text in (self.turn_open, *blocks, self.turn_close) for i in self.encode(text)]
