"""``mini_o3_grounding``: Mini-o3's grounding calls::

    <grounding>{"bbox_2d": [0.32, 0.18, 0.71, 0.39], "source": "original_image"}</grounding>

Coordinates are relative 0-1 of the image named by ``source`` (``original_image``, or
``observation_N``: the N-th view shown, from 1), converted exactly. The observation comes back as
Mini-o3 was trained to see it: "After the above Action N-1, here is the the zoom-in image
(Observation N):" (their wording, repeated "the" included), the image, and the instruction to go on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from perceive.actions import Action
from perceive.geometry import Frame
from perceive.protocols.base import BoxProblem, Resolved, TextToolProtocol, crop_call, read_box, view_at
from perceive.protocols.calls import ParseErrorKind
from perceive.strict import FrozenStrictModel

SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the user's question based on the image provided. Output your thinking "
    "process within the <think> and </think> tags. Whenever you find anything unclear, you can zoom in a specific "
    "region in the given image to see more clearly by outputing <grounding>{\"bbox_2d\": [x0, y0, x1, y1], "
    "\"source\": \"original_image\"}</grounding>, where (x0, y0) and (x1, y1) are the top-left and bottom-right "
    "coordinates of the region that you want to zoom in, respectively (suppose the width and height of the image "
    "are 1.0), and 'source' refers to the image that you zoom in and could be either 'original_image' or "
    "'observation_i'. Once the final answer is confirmed, put it within <answer> and </answer>.")
OBSERVATION = "After the above Action {action}, here is the the zoom-in image (Observation {observation}):\n"
CONTINUE = (".\nContinue your reasoning process inside <think> and </think>. If needed, you can continue to zoom in "
            "on the original image or any of the observations, by outputting <grounding> and </grounding> as "
            "before. If the final answer is confirmed, put your final answer inside <answer> and </answer>.")
_OBS = re.compile(r"observation_(\d+)")


class MiniO3Options(FrozenStrictModel):
    """Options of ``mini_o3_grounding``."""

    #: clamp a box that leaves its image (and enlarge one under ``min_box``); False: report it
    repair: bool = True
    #: the smallest side in view pixels (unset: none, as Mini-o3)
    min_box: int | None = Field(None, ge=1)
    #: boxes whose aspect ratio reaches this are refused (Mini-o3's function tools: 200)
    max_aspect: float = Field(200, gt=1)
    #: the registered crop action a grounding call runs (it must take a box: ``args_for_box``)
    action: str = "region_select"
    #: "Action K" of observation N is K = N + action_offset (Mini-o3's rollout: N - 1)
    action_offset: int = -1
    #: write Mini-o3's system prompt when the run sets none
    declare: bool = True


class MiniO3Grounding(TextToolProtocol):
    name = "mini_o3_grounding"
    description = "Mini-o3's <grounding>{bbox_2d, source}</grounding>: relative 0-1 of the named image."
    Options = MiniO3Options
    open_tag = "<grounding>"
    close_tag = "</grounding>"
    tool = "grounding"

    def system_prompt(self, system: str | None, actions: Sequence[Action]) -> str | None:
        return SYSTEM_PROMPT if system is None and self.options.declare else system

    def parse_body(self, body: str) -> tuple[str, Mapping[str, Any]]:
        try:
            obj = json.loads(body.strip())
        except (ValueError, RecursionError) as exc:
            raise BoxProblem(ParseErrorKind.INVALID_JSON, f"the grounding call is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise BoxProblem(ParseErrorKind.INVALID_ARGS, 'a grounding call is {"bbox_2d": [...], "source": ...}')
        return self.tool, obj

    def call_text(self, name: str, arguments: Mapping[str, Any]) -> str:
        return f"{self.open_tag}{json.dumps(dict(arguments), ensure_ascii=False)}{self.close_tag}"

    def resolve(self, tool: str, arguments: Mapping[str, Any], views: Sequence[Frame],
                actions: Mapping[str, Action]) -> Resolved:
        o = self.options
        if "bbox_2d" not in arguments:
            raise BoxProblem(ParseErrorKind.INVALID_ARGS, "a grounding call needs bbox_2d")
        source = arguments.get("source", "original_image")
        if not isinstance(source, str):
            raise BoxProblem(ParseErrorKind.INVALID_ARGS, f"source must be a string, got {source!r}")
        m = _OBS.fullmatch(source)
        if source == "original_image":
            frame = view_at(views, 0, source)
        elif m:
            n = int(m.group(1))
            frame = view_at(views, n if n >= 1 else -1, source)
        else:
            raise BoxProblem(ParseErrorKind.UNKNOWN_VIEW, f"source {source!r} is neither 'original_image' nor "
                             "'observation_N'")
        box, repairs = read_box(arguments["bbox_2d"], frame, scale=1, repair=o.repair, min_size=o.min_box,
                                small_box="qwen_agent", max_aspect=o.max_aspect,
                                aspect_inclusive=False)
        return crop_call(actions, o.action, tool, arguments, frame, box, repairs, views)

    def observation_text(self, layout, blocks: Sequence[str], index: int) -> str:
        off = self.options.action_offset
        body = "\n".join(OBSERVATION.format(action=index + k + off, observation=index + k) + b + CONTINUE
                         for k, b in enumerate(blocks))
        return layout.turn_open + body + layout.turn_close
