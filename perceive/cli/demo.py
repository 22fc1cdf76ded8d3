"""``perceive demo``: what a perception token does, end to end, on a real photo.

Until a trained default model ships, the demo plays the model's part: it streams a Region
Selection span token by token through the parser, dispatches the call through the plugin
registry, then zooms inside the crop (a second hop, chosen in the crop's own frame) and
prints what happened.
"""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.output import console


def demo(out: Path = typer.Option(Path("out/demo"), help="Where to write the views.")) -> None:
    """Run the reference plugins on a bundled real photo and print what they did."""
    from perceive.actions import ActionContext
    from perceive.dispatch import dispatch
    from perceive.plugins import get_registry
    from perceive.protocol import DictCodec, PerceptionCall, StreamParser
    from perceive.testing.images import real_photos
    from perceive.vocabulary import REGION_END, REGION_START, Vocabulary

    reg = get_registry()
    photo = real_photos()["astronaut"]
    console.print(f"image: scikit-image 'astronaut', {photo.width}x{photo.height} px")

    v = Vocabulary(8)
    # What a VPT model emits for "What is on the astronaut's helmet?" (the head is near x 2-3, y 0-1)
    generated = ["The", " region", ":", REGION_START, v.x(2), v.y(0), v.x(3), v.y(1), REGION_END]
    table = dict(enumerate(dict.fromkeys(generated)))
    ids = {t: i for i, t in table.items()}
    parser = StreamParser(reg.select(), DictCodec(table))
    events = parser.feed_many(ids[t] for t in generated)
    call_ev = next(e for e in events if isinstance(e, PerceptionCall))
    console.print(f"model emitted: {''.join(generated)}", markup=False, highlight=False)

    ctx = ActionContext.for_image(photo)
    hop1 = dispatch(reg.pm, reg.action(call_ev.action), call_ev.to_call(), ctx)
    if not hop1.ok:
        console.print(f"[red]hop 1 failed[/]: {hop1.failure}")
        raise typer.Exit(1)
    crop = hop1.observation[0]

    # Hop 2: zoom on the top half of the crop, cells chosen in the crop's own frame.
    zoom = reg.action("zoom")
    args = zoom.parse([v.x(1), v.x(6), v.y(0), v.y(2)])
    from perceive.actions import ActionCall

    ctx2 = ActionContext(image=crop.image, frame=crop.frame, root=photo, options={"size": 448},
                         _ids=ctx._ids)
    hop2 = dispatch(reg.pm, zoom, ActionCall("zoom", args, target=crop.frame.id), ctx2)
    if not hop2.ok:
        console.print(f"[red]hop 2 failed[/]: {hop2.failure}")
        raise typer.Exit(1)

    out.mkdir(parents=True, exist_ok=True)
    for i, res in enumerate((hop1, hop2), 1):
        view = res.observation[0]
        path = out / f"hop{i}_{res.call.action}.png"
        view.image.save(path)
        a = res.call.args
        console.print(
            f"hop {i}: {res.call.action} cells x={list(a.xs)} y={list(a.ys)} chosen in view "
            f"{res.call.target!r} -> box {view.box.as_tuple()} in the original, "
            f"view {view.image.width}x{view.image.height} px, {res.elapsed_ms:.1f} ms -> {path}",
            markup=False, highlight=False)
    console.print(f"{len(reg.actions)} actions from {len(reg.plugins)} plugins are installed; "
                  "see `perceive plugins list`.")
