"""Governance: the core knows no re-encode family. The reference branches (DINOv2, SAM, the
native vision tower; the paper's detection, seg and clip token families) are plugins in
plugins/perceive_dino|sam|native that register their branch like any third-party plugin; nothing
in perceive/ may name them, their tokens, their dataset keys or their checkpoint prefixes.

A name that truly has to stay goes in ALLOWED with the reason.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "perceive"

FORBIDDEN = [
    re.compile(r"dino", re.I),  # DINOv2, the dino action, dinov2_* encoders, dino_config.json
    re.compile(r"\bsam\b|\bsam_|_sam\b", re.I),  # the sam action, sam_vit_* encoders, SAM
    re.compile(r"\bSam[A-Z]"),  # SamProjector, SamImageProcessor...
    re.compile(r"segment.anything", re.I),
    re.compile(r"\bnative\b", re.I),  # the native action and encoder
    re.compile(r"detection", re.I),  # <|detection_action...|>, detection_images, detection_model.
    re.compile(r"\bseg_|<\|seg_", re.I),  # <|seg_action...|>, seg_images, seg_model.
    re.compile(r"\bclip_(?:action|image|projector|pixel)", re.I),  # <|clip_...|>, clip_images, clip_projector.
    re.compile(r"[\"']clip[\"']", re.I),  # the paper's family name as a string
    re.compile(r"\bCLIP\b"),
]

# (path relative to the repository, text the line contains): why it stays
ALLOWED = {
    ("perceive/data/cards.py", 'REENCODE_BRANCH = "dino"'):
        "the number-card recipe's data choice: reencode.json uses the branch recipes/cards add "
        "(any installed branch can be asked for: generate(..., reencode=NAME))",
}
SUFFIXES = {".py", ".md", ".toml", ".txt", ".json", ".yaml", ".yml", ".jinja", ".cfg", ".ini", ""}


def hits() -> list[tuple[str, int, str]]:
    out = []
    for f in sorted(CORE.rglob("*")):
        if not f.is_file() or "__pycache__" in f.parts or f.suffix not in SUFFIXES:
            continue
        rel = f.relative_to(ROOT).as_posix()
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if any(p.search(line) for p in FORBIDDEN):
                out.append((rel, i, line.strip()))
    return out


def allowed(rel: str, line: str) -> bool:
    return any(rel == path and text in line for path, text in ALLOWED)


def test_no_reencode_family_is_named_in_the_core():
    bad = [f"{rel}:{i}: {line}" for rel, i, line in hits() if not allowed(rel, line)]
    assert not bad, ("the core names a re-encode family; move it into its plugin (a BranchSpec) or, if it "
                     "truly must stay, add it to ALLOWED with the reason:\n" + "\n".join(bad))


def test_every_allowed_entry_is_still_needed():
    found = hits()
    stale = [key for key in ALLOWED if not any(rel == key[0] and key[1] in line for rel, _, line in found)]
    assert not stale, f"remove these from ALLOWED: {stale}"


def test_the_scan_sees_what_it_forbids():
    """The patterns catch each family's names and tokens, and not ordinary words."""
    for text in ["DINOv2", "dinov2_large", '"sam"', "sam_vit_l", "SamProjector", "segment_anything", "native",
                 "<|detection_action_start|>", "seg_images", "<|seg_action|>", "clip_pixel_values",
                 "<|clip_image_pad|>", "'clip'", "CLIP"]:
        assert any(p.search(text) for p in FORBIDDEN), text
    for text in ["sample", "same", "alternative", "clip_grad_norm_", "box.clip(w, h)", "np.clip", "segment"]:
        assert not any(p.search(text) for p in FORBIDDEN), text


def test_the_reference_branches_are_plugins():
    from perceive.plugins import load_registry

    reg = load_registry()
    for name in ("dino", "sam", "native"):
        r = reg.branches[name]
        assert r.plugin == name and r.dist == "perceive"  # loaded through its entry point, as any plugin
        assert reg.actions[name].obj.grammar.start == r.obj.tokens.start
