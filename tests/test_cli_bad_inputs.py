"""Every CLI command, fed bad input, fails cleanly: a non-zero exit, a message that says what is
wrong, and never a Python traceback.

Each case is a process of its own running the console script's entry point in a folder of bad
inputs (missing files, folders where files belong and files where folders belong, corrupt and
oversized images, malformed YAML and JSON, bad numbers, empty strings, broken model folders).
Importing torch costs seconds per process, so one driver process imports perceive once and forks
a child per case (see ``DRIVER``); two more cases run through the installed ``perceive`` script
and ``python -m perceive`` from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIME_BOUND_S = 60  # per command; a clean failure takes seconds
IMG = "good.png"
Q = "What number is written on the card?"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds almost no data: a
    decompression bomb as far as the header is concerned."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _model_folder(dst: Path) -> Path:
    """A working model folder: the shipped default model, or a tiny one when it is absent."""
    from perceive.defaults import default_model_path

    src = default_model_path()
    if src is not None:
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("examples"))
        return dst
    from perceive.model import save_model
    from perceive.testing.tiny import tiny_vpt_model

    return save_model(tiny_vpt_model(branches=()), dst)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from PIL import Image

    d = tmp_path_factory.mktemp("bad_inputs")
    Image.new("RGB", (64, 48), "navy").save(d / IMG)
    (d / "afile").write_text("just text\n")
    (d / "adir").mkdir()
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (d / "empty.png").write_bytes(b"")
    (d / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    Image.new("RGB", (1, 1), "navy").save(d / "one_pixel.png")
    Image.new("RGB", (20000, 50), "navy").save(d / "panorama.png")  # a few KB as PNG
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6, "turn a quarter clockwise to show": a phone's portrait photo
    card = Image.open(ROOT / "models" / "default" / "examples" / "card_0.png").convert("RGB")
    card.transpose(Image.Transpose.ROTATE_90).save(d / "sideways.jpg", quality=95, exif=exif)
    (d / "bad.yaml").write_text("model: {path: [1, 2\n  steps: : :\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "laughs.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{k}: &{k} [{', '.join([f'*{p}'] * 10)}]\n" for p, k in zip("abcdef", "bcdefg", strict=True)))  # 10^7
    (d / "corrupt.json").write_text("{not json")
    (d / "obj.json").write_text('{"a": 1}')
    (d / "region.json").write_text("[]")
    (d / "region_item.json").write_text('[{"box": [0, 0]}]')
    (d / "views_size.json").write_text('[{"box": [0, 0, 8, 8], "size": [5]}]')  # was an IndexError
    (d / "views_zero.json").write_text('[{"box": [0, 0, 8, 8], "size": [0, 5]}]')  # was a ZeroDivisionError
    (d / "views_outside.json").write_text('[{"box": [0, 0, 80, 8]}]')
    (d / "tiny.yaml").write_text(
        "model: {tiny: {hidden: 32, layers: 1, heads: 2, kv_heads: 1, vision_depth: 1, vision_dim: 16}}\n"
        "data: {train: region.json}\noptim: {steps: 1, batch_size: 1}\noutput: run\n")
    # questions with the paper's region trigger, trained from a model that declares none (as both shipped models)
    (d / "trig.json").write_text(json.dumps([{"images": [IMG], "messages": [
        {"role": "user", "content": f"<image>{Q} \nIdentify the region that can help you answer the question, and "
                                    "then answer the question."}, {"role": "assistant", "content": "7"}]}]))
    (d / "trig.yaml").write_text("model: {path: model}\ndata: {train: trig.json}\noptim: {steps: 1, batch_size: 1}\n"
                                 "output: run_trig\n")
    # a checkpoint of tiny.yaml's run with a 64-wide model (resuming compares configs before any weight is read)
    ckpt = d / "ckpt" / "checkpoint-1"
    ckpt.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.bin", "scheduler.bin"):
        (ckpt / name).write_bytes(b"")
    tiny = {"hidden": 64, "layers": 1, "heads": 2, "kv_heads": 1, "vision_depth": 1, "vision_dim": 16}
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1, "history": [], "config": {
        "model": {"tiny": tiny}, "data": {"train": "region.json"}, "optim": {"steps": 1, "batch_size": 1},
        "output": "run"}}))

    good = _model_folder(d / "model")
    trunc = d / "model_truncated"
    shutil.copytree(good, trunc)
    weights = trunc / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    wrong = d / "model_wrong_sizes"
    shutil.copytree(good, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = cfg["text_config"]["hidden_size"] // 2
    (wrong / "config.json").write_text(json.dumps(cfg))
    badpj = d / "model_bad_perceive_json"
    shutil.copytree(good, badpj)
    pj = json.loads((badpj / "perceive.json").read_text())
    pj.update(grid=0, view_scale="three")
    (badpj / "perceive.json").write_text(json.dumps(pj))
    nopj = d / "model_no_perceive_json"
    shutil.copytree(good, nopj)
    (nopj / "perceive.json").unlink()
    # a model with a trained dino branch, and a run config whose encoder options that branch would ignore
    from perceive.model import save_model
    from perceive.testing.tiny import tiny_vpt_model

    save_model(tiny_vpt_model(branches=("dino",)), d / "model_dino")
    (d / "branch_opts.yaml").write_text(
        "model: model_dino\nencoders:\n  - name: dinov2_small\n    options: {crop: 300}\n")
    (d / "layout.yaml").write_text("actions:\n  sam: {encoder: dinov2_small}\n")  # sam takes maps, dinov2 gives tokens
    (d / "remote.yaml").write_text("remote: {url: 'http://127.0.0.1:9/v1'}\n")
    # a tokenizer, perceive.json and chat template that do not agree (each folder one broken piece)
    missing = {"model_no_tokenizer_config": "tokenizer_config.json", "model_no_tokenizer_json": "tokenizer.json",
               "model_no_chat_template": "chat_template.jinja"}
    for name, remove in missing.items():
        shutil.copytree(good, d / name)
        (d / name / remove).unlink()
    swapped = d / "model_ids_disagree"
    shutil.copytree(good, swapped)
    pj = json.loads((swapped / "perceive.json").read_text())
    pj["region"]["start_id"], pj["region"]["end_id"] = pj["region"]["end_id"], pj["region"]["start_id"]
    (swapped / "perceive.json").write_text(json.dumps(pj))
    bogus = d / "model_token_beyond_vocab"  # special tokens added at ids the embedding has no row for
    shutil.copytree(good, bogus)
    tj = json.loads((bogus / "tokenizer.json").read_text())
    tj["added_tokens"] += [{"id": 139 + k, "content": f"<|extra_{k}|>", "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True} for k in range(60)]
    (bogus / "tokenizer.json").write_text(json.dumps(tj))
    from perceive.eval.run_folder import fingerprint
    from perceive.eval.runner import EvalConfig

    partial = d / "partial_eval"  # an eval stopped after one sample; it ran with max_new_tokens 3
    partial.mkdir()
    fp = fingerprint(EvalConfig(model=good, data=d / "region.json", runtime={"max_new_tokens": 3}))
    (partial / "fingerprint.json").write_text(json.dumps(fp))
    (partial / "predictions.jsonl").write_text('{"index": 0}\n')
    return d


# (id, argv, exit code, text the output must contain). Each command of `perceive --help` is here.
PP = ["protocols", "parse", "--protocol"]
EV = ["eval", "--model", "model", "--data", "region.json", "--out"]
CASES = [
    # ask: images, question, options
    ("ask-missing-image", ["ask", "missing.png", Q], 1, "error: image not found: missing.png"),
    ("ask-dir-as-image", ["ask", "adir", Q], 1, "error: adir is a folder, not an image file"),
    ("ask-corrupt-image", ["ask", "corrupt.png", Q], 1, "error: cannot read image corrupt.png"),
    ("ask-empty-file-image", ["ask", "empty.png", Q], 1, "error: cannot read image empty.png"),
    ("ask-empty-image-path", ["ask", "", Q], 1, "error: no image file given"),
    ("ask-bomb-image", ["ask", "bomb.png", Q], 1,
     "error: image bomb.png is 900,000,000 pixels, over the limit of 89,478,485 pixels"),
    ("ask-empty-question", ["ask", IMG, ""], 2, "error: the question is empty"),
    ("ask-negative-hops", ["ask", IMG, Q, "--max-hops", "-1"], 2, "Invalid value for '--max-hops'"),
    # not an error: the model answers without looking, and the event says which call went unanswered
    ("ask-zero-hops", ["ask", IMG, Q, "--max-hops", "0"], 0,
     "event: budget_exhausted: the model's 'region_select' call"),
    ("ask-hops-not-a-number", ["ask", IMG, Q, "--max-hops", "many"], 2, "Invalid value for '--max-hops'"),
    ("ask-render-into-a-folder", ["ask", IMG, Q, "--render", "adir"], 2, "error: --render adir is a folder"),
    ("ask-1x1-image", ["ask", "one_pixel.png", Q], 1, "error: image one_pixel.png is 1x1 px: too small to look at"),
    ("ask-panorama-image", ["ask", "panorama.png", Q], 1,
     "error: image panorama.png is 20000x50 px: its aspect ratio of 400:1 is over the 200:1"),
    # not an error: a photo stored sideways is read upright (the card's answer and box, as card_0.png)
    ("ask-sideways-photo", ["ask", "sideways.jpg", Q, "--model", "model"], 0,
     "460 hop 1 [perceive]: region_select in view root -> box (224, 336, 336, 448)"),
    ("ask-render-unwritable", ["ask", "sideways.jpg", Q, "--model", "model", "--render", "afile/out.png"], 1,
     "460 hop 1 [perceive]: region_select in view root -> box (224, 336, 336, 448) "
     "error: cannot write the trace picture --render afile/out.png: afile is a file, not a folder"),
    # ask: model folders
    ("ask-model-missing", ["ask", IMG, Q, "--model", "nowhere"], 1, "error: model folder not found: nowhere"),
    ("ask-model-is-a-file", ["ask", IMG, Q, "--model", "afile"], 1, "error: afile is a file, not a model folder"),
    ("ask-model-truncated", ["ask", IMG, Q, "--model", "model_truncated"], 1,
     "error: model_truncated/model.safetensors is truncated"),
    ("ask-model-wrong-sizes", ["ask", IMG, Q, "--model", "model_wrong_sizes"], 1,
     "error: model_wrong_sizes/config.json does not match the weights in model_wrong_sizes/model.safetensors"),
    ("ask-model-bad-perceive-json", ["ask", IMG, Q, "--model", "model_bad_perceive_json"], 1,
     "error: model_bad_perceive_json/perceive.json: 2 invalid field(s)"),
    ("ask-model-no-perceive-json", ["ask", IMG, Q, "--model", "model_no_perceive_json"], 1,
     "error: model_no_perceive_json has no perceive.json, but its tokenizer carries perception tokens"),
    ("ask-model-no-tokenizer-config", ["ask", IMG, Q, "--model", "model_no_tokenizer_config"], 1,
     "error: model_no_tokenizer_config has tokenizer.json but no tokenizer_config.json"),
    ("ask-model-no-tokenizer-json", ["ask", IMG, Q, "--model", "model_no_tokenizer_json"], 1,
     "error: model_no_tokenizer_json has tokenizer_config.json but no tokenizer.json"),
    ("ask-model-no-chat-template", ["ask", IMG, Q, "--model", "model_no_chat_template"], 1,
     "error: model_no_chat_template has no chat template: no chat_template.jinja"),
    ("ask-model-ids-disagree", ["ask", IMG, Q, "--model", "model_ids_disagree"], 1,
     "error: model_ids_disagree: the tokenizer does not agree with perceive.json: perceive.json says "
     "region.start_id = "),
    ("ask-model-token-beyond-vocab", ["ask", IMG, Q, "--model", "model_token_beyond_vocab"], 1,
     "error: model_token_beyond_vocab: the tokenizer has token(s) the model has no embedding for (its vocabulary "
     "is 192): '<|extra_53|>' (id 192)"),
    # a question the tokenizer cannot encode all of: answered, with a warning naming the characters
    ("ask-unencodable-question", ["ask", IMG, f"{Q} 🤔", "--model", "model"], 0,
     "warning: the model's tokenizer cannot encode '🤔' (U+1F914) in the question"),
    ("ask-bad-device", ["ask", IMG, Q, "--model", "model", "--device", "gpu9"], 1,
     "device (--device): 'gpu9' is not a device"),  # checked with the run config, before the model loads
    # convert
    ("convert-missing-source", ["convert", "nowhere", "out"], 1, "error: model folder not found: nowhere"),
    ("convert-into-a-file", ["convert", "model", "afile"], 1, "error: the destination afile is a file"),
    # demo (needs the default model for an answer; a wrong image fails before it loads)
    ("demo-missing-image", ["demo", "--image", "missing.png"], 1, "error: image not found: missing.png"),
    # config
    ("config-missing", ["config", "check", "missing.yaml"], 1, "missing.yaml"),
    ("config-bad-yaml", ["config", "check", "bad.yaml"], 1, "bad.yaml"),
    ("config-dir", ["config", "check", "adir"], 1, "adir"),
    ("config-encoder-wrong-layout", ["config", "check", "layout.yaml"], 1,
     "actions.sam.encoder (line 2): action 'sam' takes map features but encoder 'dinov2_small' gives tokens: use one "
     "of ['sam_vit_l', 'sam_vit_b', 'sam_vit_h'], which give map features"),
    ("config-encoder-options-a-branch-ignores", ["config", "check", "branch_opts.yaml"], 1,
     "encoders.0.options (line 4): 'crop' would be ignored: the model carries a trained 'dino' branch"),
    ("ask-encoder-options-a-branch-ignores", ["ask", IMG, Q, "--config", "branch_opts.yaml"], 1,
     "encoders.0.options (line 4): 'crop' would be ignored: the model carries a trained 'dino' branch"),
    # graph
    ("graph-validate-bad-yaml", ["graph", "validate", "bad.yaml"], 1, "bad.yaml"),
    ("graph-validate-yaml-bomb", ["graph", "validate", "laughs.yaml"], 1, "once its aliases (*name) are expanded"),
    ("graph-validate-missing", ["graph", "validate", "missing.yaml"], 2, "missing.yaml"),
    ("graph-validate-bad-set", ["graph", "validate", "free_choice", "--set", "novalue"], 2, "KEY=VALUE"),
    ("graph-validate-model-cannot-run", ["graph", "validate", "reencode_then_answer", "--model", "model"], 1,
     "error: graph 'reencode_then_answer' node 'reencode' runs 'dino', but the model has no 'dino' branch"),
    ("graph-validate-model-missing", ["graph", "validate", "free_choice", "--model", "nowhere"], 1,
     "error: model folder not found: nowhere"),
    ("graph-validate-config-bad-yaml", ["graph", "validate", "free_choice", "--config", "bad.yaml"], 1, "bad.yaml"),
    ("graph-validate-remote-config", ["graph", "validate", "free_choice", "--config", "remote.yaml"], 2,
     "error: remote.yaml drives a served model (remote.url), which cannot be checked without running it"),
    ("graph-show-bad-yaml", ["graph", "show", "bad.yaml"], 1, "error: the graph has 1 problem(s)"),
    ("graph-show-out-in-a-file", ["graph", "show", "free_choice", "--out", "afile/g.png"], 1, "afile/g.png"),
    ("graph-run-bad-yaml", ["graph", "run", "bad.yaml", "--image", IMG, "--question", Q], 1, "bad.yaml"),
    ("graph-run-1x1-image", ["graph", "run", "free_choice", "--image", "one_pixel.png", "--question", Q, "--model",
                             "model"], 1, "error: the input image is 1x1 px: too small to look at"),
    ("graph-run-render-no-format", ["graph", "run", "free_choice", "--image", IMG, "--question", Q, "--render",
                                    "trace.txt"], 2, "error: --render trace.txt: the picture's format comes from"),
    # data
    ("data-cards-out-is-a-file", ["data", "cards", "--n", "1", "--out", "afile"], 1,
     "error: the output afile is a file"),
    ("data-cards-zero", ["data", "cards", "--n", "0", "--out", "cards"], 2, "Invalid value for '--n'"),
    ("data-cards-bad-split", ["data", "cards", "--n", "1", "--out", "cards", "--split", "nope"], 1,
     "error: unknown split 'nope'"),
    ("data-cards-bad-widths", ["data", "cards", "--n", "1", "--out", "cards", "--card-widths", "60", "50"], 1,
     "error: card widths (60, 50) must be a range"),
    ("data-cards-missing-backgrounds", ["data", "cards", "--n", "1", "--out", "cards", "--backgrounds", "nowhere"],
     1, "error: the backgrounds folder nowhere does not exist"),
    ("data-cards-reencode-unknown", ["data", "cards", "--n", "1", "--out", "cards", "--reencode", "dinoo"], 2,
     "error: no installed plugin provides a re-encode branch named 'dinoo' -> did you mean 'dino'?"),
    ("data-cards-reencode-view-action", ["data", "cards", "--n", "1", "--out", "cards", "--reencode", "zoom"], 2,
     "error: action 'zoom' gives views, not features: re-encode items need a features action with a model branch"),
    ("data-reading-out-is-a-file", ["data", "reading", "--n", "1", "--out", "afile"], 1,
     "error: the output afile is a file"),
    ("data-mix-bad-count", ["data", "mix", "out.json", "region.json:abc"], 1,
     "error: bad dataset part 'region.json:abc': the COUNT after ':' must be a whole number"),
    ("data-mix-too-many", ["data", "mix", "out.json", "region.json:5"], 1,
     "error: cannot take 5 items from region.json: it has 0"),
    ("data-mix-missing", ["data", "mix", "out.json", "missing.json"], 1, "error: dataset not found: missing.json"),
    ("data-mix-not-a-list", ["data", "mix", "out.json", "obj.json"], 1, "expected a JSON list of items"),
    ("data-mix-out-is-a-dir", ["data", "mix", "adir", "region.json"], 1, "error: the output adir is a folder"),
    ("data-check-missing", ["data", "check", "missing.json"], 1, "error: cannot read dataset missing.json"),
    ("data-check-corrupt", ["data", "check", "corrupt.json"], 1, "error: cannot read dataset corrupt.json"),
    ("data-check-dir", ["data", "check", "adir"], 1, "error: cannot read dataset adir"),
    ("data-check-grid-zero", ["data", "check", "region.json", "--grid", "0"], 2, "Invalid value for '--grid'"),
    # plugins
    ("plugins-list-bad-option", ["plugins", "list", "--bogus"], 2, "--bogus"),
    ("plugins-new-empty-name", ["plugins", "new", "", "--dir", "adir"], 2, "error: plugin name '' is not valid"),
    ("plugins-new-dir-is-a-file", ["plugins", "new", "quadrant", "--dir", "afile"], 1, "afile"),
    ("plugins-check-unknown", ["plugins", "check", "nope"], 2, "error: no perception action named 'nope'"),
    # protocols
    ("protocols-list-bad-option", ["protocols", "list", "--bogus"], 2, "--bogus"),
    ("protocols-parse-unknown", [*PP, "hermes", "--image-size", "8x8", "x"], 2,
     "error: no tool-call protocol named 'hermes'"),
    ("protocols-parse-bad-option", [*PP, "hermes_json", "--image-size", "8x8", "--option", "coords=1", "x"], 2,
     "error: protocol 'hermes_json': 1 invalid option(s)"),
    ("protocols-parse-option-no-value", [*PP, "hermes_json", "--image-size", "8x8", "--option", "repair", "x"], 2,
     "error: --option 'repair': give KEY=VALUE"),
    ("protocols-parse-bad-size", [*PP, "vpt", "--image-size", "8by8", "x"], 2, "error: --image-size '8by8'"),
    ("protocols-parse-zero-size", [*PP, "vpt", "--image-size", "0x8", "x"], 2, "error: --image-size '0x8'"),
    ("protocols-parse-views-missing", [*PP, "vpt", "--image-size", "8x8", "--views", "missing.json", "x"], 1,
     "error: cannot read --views missing.json"),
    ("protocols-parse-views-corrupt", [*PP, "vpt", "--image-size", "8x8", "--views", "corrupt.json", "x"], 1,
     "error: cannot read --views corrupt.json"),
    ("protocols-parse-views-not-a-list", [*PP, "vpt", "--image-size", "8x8", "--views", "obj.json", "x"], 1,
     "error: --views obj.json: expected a JSON list of views"),
    ("protocols-parse-views-bad-item", [*PP, "vpt", "--image-size", "8x8", "--views", "region_item.json", "x"], 1,
     'error: --views region_item.json: view 1 ({"box": [0, 0]}): "box" must be a list of 4 numbers, got [0, 0]'),
    ("protocols-parse-views-bad-size", [*PP, "vpt", "--image-size", "8x8", "--views", "views_size.json", "x"], 1,
     '"size" must be a list of 2 numbers, got [5]'),
    ("protocols-parse-views-zero-size", [*PP, "vpt", "--image-size", "8x8", "--views", "views_zero.json", "x"], 1,
     '"size" must be whole numbers of pixels, at least 1, got [0, 5]'),
    ("protocols-parse-views-outside", [*PP, "vpt", "--image-size", "8x8", "--views", "views_outside.json", "x"], 1,
     "it shows (0, 0, 80, 8), which is not inside the 8x8 image"),
    # train
    ("train-missing-config", ["train", "missing.yaml"], 1, "missing.yaml"),
    ("train-bad-yaml", ["train", "bad.yaml"], 1, "bad.yaml"),
    ("train-not-a-mapping", ["train", "list.yaml"], 1, "list.yaml"),
    ("train-bad-steps", ["train", "tiny.yaml", "--steps", "ten"], 2, "Invalid value for '--steps'"),
    ("train-resume-missing", ["train", "tiny.yaml", "--resume", "run/checkpoint-9"], 1,
     "error: cannot resume: there is no checkpoint run/checkpoint-9"),
    ("train-resume-another-model", ["train", "tiny.yaml", "--resume", "ckpt/checkpoint-1"], 1,
     "error: cannot resume from ckpt/checkpoint-1: this config trains another model or on other data than the run "
     "that saved it (model.tiny.hidden: 64 -> 32)"),
    ("train-trigger-prompts-the-model-leaves-out", ["train", "trig.yaml"], 0,
     "ask with the paper's region trigger prompt ('Identify the region that can help you answer the question, and "
     "then answer the question.'), but the trained model will declare prompts.region: null"),
    # serve, and a remote model that is not there
    ("serve-local-images-missing", ["serve", "--allow-local-images", "nowhere"], 2,
     "error: --allow-local-images nowhere: not a folder"),
    ("serve-model-missing", ["serve", "--model", "nowhere"], 1, "error: model folder not found: nowhere"),
    ("serve-port-out-of-range", ["serve", "--port", "99999"], 2, "Invalid value for '--port'"),
    ("serve-port-negative", ["serve", "--port", "-1"], 2, "Invalid value for '--port'"),
    ("serve-threads-zero", ["serve", "--threads", "0"], 2, "Invalid value for '--threads'"),
    ("serve-threads-negative-in-config", ["serve", "--set", "runtime.threads=-2"], 1,
     "runtime.threads (--set runtime.threads): Input should be greater than or equal to 1"),
    ("serve-drain-window-negative", ["serve", "--drain-window", "-1"], 2, "Invalid value for '--drain-window'"),
    ("serve-host-not-this-machine", ["serve", "--host", "203.0.113.1"], 1,  # TEST-NET-3: never a local address
     "error: cannot listen on 203.0.113.1:8000"),
    ("ask-threads-zero", ["ask", IMG, Q, "--set", "runtime.threads=0"], 1,
     "runtime.threads (--set runtime.threads): Input should be greater than or equal to 1"),
    ("ask-threads-not-a-number", ["ask", IMG, Q, "--set", "runtime.threads=many"], 1,
     "runtime.threads (--set runtime.threads): Input should be a valid integer"),
    ("ask-remote-unreachable", ["ask", IMG, Q, "--remote", "http://127.0.0.1:9/v1", "--set", "remote.max_retries=0"],
     1, "error: cannot reach http://127.0.0.1:9/v1"),
    # eval
    ("eval-missing-config", ["eval", "missing.yaml"], 1, "missing.yaml"),
    ("eval-bad-yaml", ["eval", "bad.yaml"], 1, "bad.yaml"),
    ("eval-model-without-data", ["eval", "--model", "model"], 2,
     "error: give a config file, or --model (or --remote URL) and --data"),
    ("mcp-local-images-missing", ["mcp", "--allow-local-images", "nowhere"], 2,
     "error: --allow-local-images nowhere: not a folder"),
    ("mcp-bad-yaml", ["mcp", "--config", "bad.yaml"], 1, "bad.yaml"),
    ("mcp-port-without-http", ["mcp", "--port", "9000"], 2, "error: --host and --port are for --http"),
    ("mcp-port-out-of-range", ["mcp", "--http", "--port", "99999"], 2, "Invalid value for '--port'"),
    ("mcp-graph-missing", ["mcp", "--set", "mcp.graphs=[nowhere.yaml]"], 1,
     "error: the command line: mcp.graphs[0] (nowhere.yaml) cannot be served"),
    ("mcp-host-not-this-machine", ["mcp", "--http", "--host", "203.0.113.1"], 1,
     "error: cannot listen on 203.0.113.1:8765"),
    ("eval-compare-missing", ["eval", "compare", "nowhere"], 1,
     "error: nowhere is not an eval run (no such file or folder)"),
    ("eval-compare-corrupt", ["eval", "compare", "corrupt.json"], 1,
     "error: corrupt.json is not an eval result: not valid JSON"),
    ("eval-compare-out-under-a-file", ["eval", "compare", "corrupt.json", "--out", "afile/t.md"], 1,
     "error: cannot create --out afile/t.md: afile is a file, not a folder"),
    ("eval-out-under-a-file", [*EV, "afile/out"], 1,
     "error: cannot create --out afile/out: afile is a file, not a folder"),
    ("eval-resume-nothing", [*EV, "adir", "--resume"], 1,
     "error: nothing to resume in adir (no fingerprint.json: no eval started there)"),
    ("eval-resume-changed-config", [*EV, "partial_eval", "--resume"], 1,
     "error: cannot resume partial_eval: the partial run used another config or data: runtime.max_new_tokens was 3, "
     "now 256"),
    ("eval-unfinished-without-resume", [*EV, "partial_eval"], 1,
     "error: partial_eval holds an unfinished eval (1 sample(s) done)"),
]


def test_every_command_is_in_the_corpus():
    """A command added to the CLI gets bad-input cases here."""
    from typer.main import get_command

    from perceive.cli import app

    root = get_command(app)
    commands = set()
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        commands.update(f"{name} {s}" for s in subs) if subs else commands.add(name)
    covered = {" ".join(argv[:2]) if " ".join(argv[:2]) in commands else argv[0] for _, argv, _, _ in CASES}
    covered.add("version")  # takes no input
    assert commands - covered == set()


# Runs the cases in one interpreter that imports perceive (and torch) once, then forks a child
# per case; the child runs the console script's entry point, perceive.cli.main, with its own argv
# and its stdout and stderr in a file. Each case is still a process of its own, with a deadline.
DRIVER = r"""
import json, os, sys, tempfile, time, traceback
cases, bound = json.loads(sys.argv[1]), float(sys.argv[2])
from perceive.cli import main
for heavy in ("perceive.model", "perceive.loop", "perceive.train", "perceive.eval.runner"):
    try:
        __import__(heavy)
    except Exception:
        pass
results = {}
for case_id, argv in cases:
    out = tempfile.TemporaryFile(mode="w+b")
    sys.stdout.flush(); sys.stderr.flush()
    start = time.monotonic()
    if not hasattr(os, "fork"):  # no fork (Windows): a fresh interpreter per case, slower
        import subprocess
        try:
            p = subprocess.run([sys.executable, "-m", "perceive", *argv], stdout=out, stderr=out, timeout=bound)
            code = p.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        out.seek(0)
        results[case_id] = {"code": code, "output": out.read().decode(errors="replace"),
                            "seconds": round(time.monotonic() - start, 2)}
        continue
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1); os.dup2(out.fileno(), 2)
        sys.argv = ["perceive", *argv]
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 99
        finally:
            sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() - start > bound:
            os.kill(pid, 9); os.waitpid(pid, 0); code = "timeout"
            break
        time.sleep(0.01)
    took = time.monotonic() - start
    out.seek(0)
    results[case_id] = {"code": code, "output": out.read().decode(errors="replace"), "seconds": round(took, 2)}
print(json.dumps(results))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PERCEIVE_DEBUG", "PERCEIVE_MAX_IMAGE_PIXELS")}
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="module")
def results(corpus) -> dict[str, dict]:
    cases = json.dumps([(c[0], c[1]) for c in CASES])
    out = subprocess.run([sys.executable, "-c", DRIVER, cases, str(TIME_BOUND_S)], cwd=corpus, env=_env(),
                         capture_output=True, text=True, timeout=TIME_BOUND_S * len(CASES))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(("case", "code", "expect"), [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly(results, case, code, expect):
    r = results[case]
    text = r["output"]
    assert r["code"] == code, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert expect in " ".join(text.split()), text
    assert r["seconds"] < TIME_BOUND_S, f"{case} took {r['seconds']} s"


@pytest.mark.slow
@pytest.mark.parametrize(("how", "argv", "expect"), [
    ("console-script", ["data", "mix", "out.json", "region.json:abc"], "error: bad dataset part 'region.json:abc'"),
    ("python-m", ["ask", IMG, Q, "--model", "model_truncated"],
     "error: model_truncated/model.safetensors is truncated"),
], ids=["console-script", "python-m"])
def test_the_real_entry_points_fail_cleanly(corpus, how, argv, expect):
    """The same, through the installed ``perceive`` script and ``python -m perceive``, each a fresh
    interpreter."""
    script = Path(sys.executable).parent / "perceive"
    cmd = [str(script)] if how == "console-script" and script.exists() else [sys.executable, "-m", "perceive"]
    start = time.monotonic()
    out = subprocess.run([*cmd, *argv], cwd=corpus, env=_env(), capture_output=True, text=True,
                         timeout=TIME_BOUND_S * 2)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in text and expect in " ".join(text.split()), text
    assert time.monotonic() - start < TIME_BOUND_S
