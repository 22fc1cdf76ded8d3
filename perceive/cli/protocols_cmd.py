"""``perceive protocols ...``: list the tool-call protocols, and read a model's output with one."""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import typer

from perceive.cli.output import fail

app = typer.Typer(no_args_is_help=True, help="Tool-call protocols: how each model family calls perception actions.")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every installed tool-call protocol, where it comes from, and its options."""
    from perceive.actions import describe_options
    from perceive.plugins import get_registry

    reg = get_registry()
    rows = [{"name": n, "plugin": r.plugin, "description": r.obj.description,
             "options": r.obj.Options.model_json_schema().get("properties", {})}
            for n, r in sorted(reg.protocols.items())]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        r = reg.protocols[row["name"]]
        typer.echo(f"{row['name']}  (from {row['plugin']})\n    {row['description']}\n"
                   f"    options: {describe_options(r.obj.Options)}")


_SIZE = re.compile(r"(\d+)[xX](\d+)")


def parse_size(text: str, flag: str = "--image-size") -> tuple[int, int]:
    m = _SIZE.fullmatch(text.strip())
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise fail(f"{flag} {text!r}: give the size as WxH, e.g. 1024x768", 2)
    return int(m.group(1)), int(m.group(2))


VIEW_FORMS = ('each view is {"box": [x0, y0, x1, y1], "size": [w, h]} (the box in the original\'s pixels, the size '
              'optional) or a frame as traces write it ({"id", "width", "height", "to_root"})')


def load_views(path: Path | None, width: int, height: int):
    """``[root frame, view 1, ...]`` from ``--views FILE``: a JSON list, each item a view's
    ``box`` ([x0, y0, x1, y1] in root pixels, inside the image; whole pixels unless ``size`` is
    given) with an optional ``size`` ([w, h]: the view's own pixels, default the box's), or a frame
    as traces write it (``id``, ``width``, ``height``, ``to_root``). A malformed item fails with one
    line naming it and what is wrong."""
    from perceive.errors import ConfigError
    from perceive.geometry import Frame

    root = Frame.root(width, height)
    frames = [root]
    if path is None:
        return frames
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read --views {path}: {exc}") from None
    if not isinstance(items, list):
        raise fail(f"--views {path}: expected a JSON list of views, got {type(items).__name__}")
    for k, item in enumerate(items, 1):
        try:
            frames.append(_view(root, k, item))
        except ValueError as exc:
            raise fail(ConfigError(f"--views {path}: view {k} ({json.dumps(item)[:80]}): {exc}", hint=VIEW_FORMS)) \
                from None
    return frames


def _numbers(value, n: int, what: str, *, whole: bool = False) -> list[Fraction]:
    """``value`` as ``n`` finite numbers (exact), or a ValueError that says what it should be."""
    if not (isinstance(value, list) and len(value) == n
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{what} must be a list of {n} numbers, got {json.dumps(value)[:60]}")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"{what} must be finite numbers, got {json.dumps(value)[:60]}")
    out = [Fraction(v) if isinstance(v, int) else Fraction(repr(v)) for v in value]
    if whole and any(v.denominator != 1 or v < 1 for v in out):
        raise ValueError(f"{what} must be whole numbers of pixels, at least 1, got {json.dumps(value)}")
    return out


def _view(root, k: int, item):
    """One ``--views`` item as a frame; a ValueError says what is wrong with it."""
    from perceive.geometry import Box, Frame

    if not isinstance(item, dict):
        raise ValueError("not an object")
    if "to_root" in item:  # a frame, as a trace writes it
        if not (isinstance(item.get("id"), str) and item["id"]):
            raise ValueError('a frame needs its "id" (a string)')
        if not all(isinstance(item.get(k), int) and not isinstance(item.get(k), bool) and item[k] >= 1
                   for k in ("width", "height")):
            raise ValueError('a frame\'s "width" and "height" must be whole numbers of pixels, at least 1')
        t = item["to_root"]
        if not isinstance(t, dict) or set(t) - {"ox", "oy", "sx", "sy"}:
            raise ValueError('"to_root" must be an object of "ox", "oy", "sx", "sy"')
        try:
            frame = Frame.from_dict(item)
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            raise ValueError(f'"to_root" holds something that is not a number: {exc}') from None
        if frame.sx <= 0 or frame.sy <= 0:
            raise ValueError('"to_root" scales "sx" and "sy" must be positive')
        box = frame.root_box()
    else:
        if "box" not in item:
            raise ValueError('no "box"')
        x0, y0, x1, y1 = _numbers(item["box"], 4, '"box"')
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f'"box" {json.dumps(item["box"])} is empty: it needs x0 < x1 and y0 < y1')
        size = item.get("size")
        if size is None and any(v.denominator != 1 for v in (x0, y0, x1, y1)):
            raise ValueError('"box" needs whole pixels when no "size" is given (the view is a plain crop)')
        out = None if size is None else tuple(int(v) for v in _numbers(size, 2, '"size"', whole=True))
        frame = root.child(f"v{k}", Box(x0, y0, x1, y1), out)
        box = frame.root_box()
    if box.x0 < 0 or box.y0 < 0 or box.x1 > root.width or box.y1 > root.height:
        raise ValueError(f"it shows {box.as_tuple()}, which is not inside the {root.width}x{root.height} image")
    return frame


@app.command("parse")
def parse(text: str = typer.Argument(..., help="The model's output."),
          protocol: str = typer.Option(..., "--protocol", help="A protocol name (`perceive protocols list`)."),
          image_size: str = typer.Option(..., "--image-size", help="The original image's size, WxH."),
          views: Path = typer.Option(None, "--views", help="A JSON list of the views shown so far (their boxes "
                                                           "in root pixels, or frames), for img_idx/observation_N."),
          option: list[str] = typer.Option([], "--option", help="A protocol option, KEY=VALUE (VALUE is JSON or a "
                                                                "word); repeatable."),
          seen_size: str = typer.Option(None, "--seen-size", help="The size the model saw the original at, WxH "
                                                                 "(after its processor's resize), for "
                                                                 "coordinates: absolute_resized.")) -> None:
    """Read TEXT as the protocol does while the model generates: print the calls (tool, arguments,
    action, the box in the target view's pixels and in root pixels) and the parse errors, as JSON."""
    from perceive.errors import ConfigError
    from perceive.plugins import get_registry
    from perceive.protocols import TextToolProtocol

    w, h = parse_size(image_size)
    options = {}
    for o in option:
        key, sep, value = o.partition("=")
        if not sep or not key:
            raise fail(f"--option {o!r}: give KEY=VALUE", 2)
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    reg = get_registry()
    try:
        proto = reg.protocol(protocol, options)
    except ConfigError as exc:
        raise fail(exc, 2) from None
    frames = load_views(views, w, h)
    if seen_size is not None:
        import dataclasses

        frames[0] = dataclasses.replace(frames[0], seen=parse_size(seen_size, "--seen-size"))
    actions = reg.select()
    if isinstance(proto, TextToolProtocol):
        results = proto.read_text(text, frames, actions)
    else:  # a token protocol (vpt): each <|...|> piece and each run of text between is one token
        from perceive.protocols.calls import ParseError
        from perceive.protocols.vpt_stream import parse_tokens, split_text

        results = parse_tokens([a for a in actions if a.grammar is not None], split_text(text))
        results = [r if isinstance(r, ParseError) else r.to_call() for r in results]
    calls, errors = [], []
    for r in results:
        if hasattr(r, "kind"):
            errors.append(r.to_dict())
        elif hasattr(r, "tool"):
            calls.append(r.to_dict())
        else:  # an ActionCall of a span: its box in root pixels when it has one
            d = r.to_dict()
            box_in = getattr(r.args, "box_in", None)
            if box_in is not None:
                d["box_root"] = box_in(w, h, "root").to_dict()
            calls.append(d)
    typer.echo(json.dumps({"protocol": protocol, "image_size": [w, h], "views": [f.to_dict() for f in frames],
                           "calls": calls, "errors": errors}, indent=2))
