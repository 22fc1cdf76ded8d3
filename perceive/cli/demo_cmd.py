"""``perceive demo``: the shipped default model reads a number card through a perception hop.

The full image is shown to the model at 112x112 px, where the digits are unreadable; the model
emits a Region Selection span, the loop crops those cells from the original image and shows the
crop, and the model answers. The demo prints the answer, the hop trace and the trace picture.
"""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.output import console, fail


def demo(out: Path = typer.Option(Path("out/demo"), help="Where to write the trace picture."),
         image: Path = typer.Option(None, "--image", help="Another card image (default: the shipped example)."),
         device: str = typer.Option("auto", "--device")) -> None:
    """Ask the default model what number is on a card photo; print the answer and the hops."""
    from perceive.cli.graph_cmd import run_graph
    from perceive.data.cards import QUESTION
    from perceive.defaults import default_examples, default_model_path

    model = default_model_path()
    if model is None:
        raise fail("the default model is not in this checkout (models/default); "
                   "pass --model to `perceive ask` or restore the folder with git", 2)
    expected = None
    if image is not None:
        from perceive.images import check_image_file

        check_image_file(image)  # header only: a wrong image fails before the model loads
    if image is None:
        examples = default_examples()
        image, expected = examples[0]
    console.print(f"image: {image}" + (f" (the card says {expected})" if expected else ""), markup=False)
    console.print(f"question: {QUESTION}", markup=False)
    out.mkdir(parents=True, exist_ok=True)
    picture = out / "trace.png"
    from perceive.cli.run_config import run_config

    cfg = run_config(None, None, [(("model", "path"), model, "models/default"), (("runtime", "max_hops"), 2, "demo"),
                                  (("runtime", "max_new_tokens"), 16, "demo"), (("device",), device, "--device")])
    run_graph(cfg, image, QUESTION, False, picture)
    console.print("The examples are held-out cards this model reads correctly; it does not read every card. "
                  "Measured accuracy: docs/models/default.md", markup=False)
