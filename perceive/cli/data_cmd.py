"""``perceive data cards|reading|mix|check``: generate and check datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.output import console, fail

data_app = typer.Typer(no_args_is_help=True, help="Generate and check datasets.")


@data_app.command()
def cards(n: int = typer.Option(..., "--n", min=1, help="Number of images."),
          out: Path = typer.Option(..., "--out", help="Output folder."),
          seed: int = typer.Option(0, "--seed"),
          backgrounds: Path = typer.Option(None, "--backgrounds", help="Folder of background photos."),
          split: str = typer.Option("train", "--split",
                                    help="Backgrounds: train or eval (held-out) scikit-image photos, train_wide "
                                         "(train plus the other bundled photos), or flat (single colours: a "
                                         "first localisation stage)."),
          fmt: str = typer.Option("png", "--format", help="png (lossless) or jpg (smaller, for large sets)."),
          margin: int = typer.Option(1, "--margin", min=0,
                                     help="Cells added around the card's cells in the crop (1: the paper)."),
          prompts: bool = typer.Option(True, "--prompts/--no-prompts",
                                       help="End region/re-encode questions with the paper's instruction."),
          augment: bool = typer.Option(False, "--augment",
                                       help="Training only: jitter each background (flips, turns, greyscale, "
                                            "gamma, contrast) before drawing the card."),
          distractors: bool = typer.Option(False, "--distractors",
                                           help="Training only: paint light card-sized blobs (hard negatives) "
                                                "under the card."),
          widths: tuple[int, int] = typer.Option((40, 64), "--card-widths",
                                                 help="Training only: the card's width range LO HI in px, inside "
                                                      "40 64 (narrow it to over-sample small cards)."),
          large_share: float = typer.Option(0.0, "--large-cards", metavar="SHARE",
                                            help="Make this share of the cards (0 to 1, each card by a seeded "
                                                 "coin) large: readable in a 112x112 first view. Any split, eval "
                                                 "included; each item's card_size says which."),
          large_widths: tuple[int, int] | None = typer.Option(
              None, "--large-card-widths",
              help="The large cards' width range LO HI in px, above 64 and at most 448 (default 240 320: a "
                   "digit is 0.06 x width px tall at 112x112, so 14-19 px, a 14 px patch or more)."),
          reencode: str | None = typer.Option(None, "--reencode", metavar="ACTION",
                                              help="The features action whose span, placeholder and images key "
                                                   "reencode.json uses: any installed one with a model branch "
                                                   "(`perceive plugins list`), e.g. a plugin's. Default: the card "
                                                   "recipes' branch.")
          ) -> None:
    """Write the number-card task in the paper's dataset layout (plain, region, reencode)."""
    from rich.progress import Progress

    from perceive.data.cards import LARGE_WIDTHS, REENCODE_BRANCH, check_large_cards, generate, reencode_branch
    from perceive.data.dataset import DatasetError
    from perceive.errors import PerceiveError

    reencode = REENCODE_BRANCH if reencode is None else reencode
    try:
        reencode_branch(reencode)  # a wrong name is a usage error, before anything is written
        if large_widths is not None and large_share == 0:
            raise DatasetError("--large-card-widths sets the large cards' widths, but --large-cards is 0: no card "
                               "is large", hint="add --large-cards SHARE, e.g. --large-cards 0.5")
        large_widths = check_large_cards(large_share, large_widths or LARGE_WIDTHS)
    except PerceiveError as e:
        raise fail(e, 2) from None
    with Progress() as bar:
        task = bar.add_task("cards", total=n)
        try:
            generate(out, n, seed=seed, backgrounds=backgrounds, split=split, fmt=fmt, margin=margin, prompts=prompts,
                     augment=augment, distractors=distractors, widths=widths, reencode=reencode,
                     large_share=large_share, large_widths=large_widths,
                     progress=lambda k: bar.update(task, completed=k))
        except ValueError as e:
            raise fail(e) from None
    console.print(f"wrote {n} images and plain, region, locate, read_card, read, reencode ({reencode} spans) and "
                  f"cards .json to {out}")


@data_app.command("reading")
def reading(n: int = typer.Option(..., "--n", min=1, help="Number of crops."),
            out: Path = typer.Option(..., "--out", help="Output folder."),
            context: int = typer.Option(None, "--context", min=0,
                                        help="Card plus 0..J px of surroundings per side; omit for the touched cells."),
            scale: float = typer.Option(3.0, "--scale", min=0.1, help="Resize factor of each crop."),
            seed: int = typer.Option(0, "--seed"),
            split: str = typer.Option("train", "--split", help="scikit-image photo set: train or eval (held out).")
            ) -> None:
    """Write a reading curriculum set: crops around the card, with question and answer."""
    from rich.progress import Progress

    from perceive.data.cards import reading_set

    with Progress() as bar:
        task = bar.add_task("crops", total=n)
        reading_set(out, n, seed=seed, split=split, context=context, scale=scale,
                    progress=lambda k: bar.update(task, completed=k))
    console.print(f"wrote {n} crops and read.json to {out}")


@data_app.command("mix")
def mix_cmd(out: Path = typer.Argument(..., help="The dataset file to write."),
            parts: list[str] = typer.Argument(..., help="FILE or FILE:COUNT (a random COUNT of its items)."),
            seed: int = typer.Option(0, "--seed")) -> None:
    """Mix datasets into one file (curriculum stages keep a share of earlier items)."""
    from perceive.data.mix import mix, parse_part
    from perceive.errors import PerceiveError

    try:
        mix(out, [parse_part(part) for part in parts], seed=seed)
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    except OSError as exc:
        raise fail(f"cannot mix {' '.join(parts)} into {out}: {exc}", 1) from None
    console.print(f"wrote {out}")


@data_app.command("check")
def check(path: Path, grid: int = typer.Option(8, "--grid", min=1)) -> None:
    """Report every item of a dataset that does not fit the layout."""
    from perceive.data.dataset import VPTDataset

    ds = VPTDataset(path, grid=grid)
    for issue in ds.issues:
        console.print(str(issue), markup=False)
    console.print(f"{len(ds)} usable items, {len(ds.issues)} problem(s)")
    if ds.issues:
        raise typer.Exit(1)
