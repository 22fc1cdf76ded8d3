"""A features plugin that lives outside perceive goes end to end with no change to perceive.

The plugin (tests/plugins/sobel.py: image gradients pooled into 16 tokens, its own tokens, its
own encoder module and the token projector) is installed as the distribution ``perceive-sobel``
(an installed dist-info with a ``perceive.plugins`` entry point, as pip leaves it). Then:

1. ``perceive train`` adds its branch to an existing tiny model that has never heard of it
   (``model.add_branches``: the tokens join the tokenizer, the branch starts random);
2. trains a few steps on paper-layout data that uses its placeholder (``<sobel_image>``);
3. the model is saved and reloaded (its ``perceive.json`` names the branch and the plugin);
4. the loop dispatches its span and injects its conditioned features at its pad tokens;
5. ``perceive eval`` reports its hops.

Without the plugin, the saved model does not load: the error names the branch and the plugin.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import make_dist

PLUGIN = Path(__file__).parent / "plugins" / "sobel.py"


def run_cli(*args, site: Path, timeout=600):
    # the child finds the plugin as it would on a user's machine: on its path, by its entry point
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "perceive", *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def install(site: Path) -> None:
    import importlib

    from perceive.plugins import reset_registry

    make_dist(site, "perceive-sobel", {"perceive_sobel": PLUGIN.read_text()}, {"sobel": "perceive_sobel"})
    importlib.invalidate_caches()
    reset_registry()


@pytest.mark.slow
def test_a_third_party_features_plugin_goes_end_to_end(fake_site, tmp_path):
    from perceive.data.cards import generate
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.model import load_model, save_model
    from perceive.plugins import get_registry
    from perceive.testing.scripted import ScriptedPolicy
    from perceive.testing.tiny import tiny_vpt_model

    # an existing tiny model, saved before the plugin is installed: its tokenizer lacks the tokens
    start = save_model(tiny_vpt_model(branches=()), tmp_path / "start")
    assert "sobel" not in get_registry().branches

    install(fake_site)
    reg = get_registry()
    assert reg.branches["sobel"].dist == "perceive-sobel" and reg.actions["sobel"].dist == "perceive-sobel"
    assert not reg.broken, [p.errors for p in reg.broken]

    # paper-layout data whose re-encode items use the plugin's span and placeholder
    data = generate(tmp_path / "cards", 6, seed=3, reencode="sobel")
    item = json.loads((data / "reencode.json").read_text())[0]
    assert item["messages"][1]["content"] == "<|sobel_action_start|><|sobel_action|><|sobel_action_end|>"
    assert item["messages"][2]["content"] == "<sobel_image>" and item["sobel_images"]

    # 1-2. `perceive train`: add the branch to the existing model, train a few steps
    (tmp_path / "train.yaml").write_text(f"""
model:
  path: {start}
  add_branches: [{{action: sobel}}]
data: {{train: {data / 'reencode.json'}, eval: {data / 'reencode.json'}, max_eval_samples: 2}}
optim: {{steps: 3, batch_size: 2, lr: 1e-3}}
output: {tmp_path / 'run'}
""")
    run_cli("train", tmp_path / "train.yaml", site=fake_site)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3]

    # 3. reload: perceive.json names the branch and its plugin; the weights round-trip
    path = tmp_path / "run" / "model"
    saved = json.loads((path / "perceive.json").read_text())["branches"]["sobel"]
    assert saved["plugin"] == "perceive-sobel" and saved["encoder"] == "sobel_grid"
    assert saved["encoder_config"] == {"grid": 4, "dim": 16} and saved["feature_dim"] == 16
    model = load_model(path)
    tok = model.tokenizer
    b = model.config.branches["sobel"]
    assert [b.start_id, b.action_id, b.end_id, b.pad_id] == tok.convert_tokens_to_ids(
        ["<|sobel_action_start|>", "<|sobel_action|>", "<|sobel_action_end|>", "<|sobel_image_pad|>"])
    again = load_model(save_model(model, tmp_path / "again"))
    for (k, x), y in zip(model.branches.state_dict().items(), again.branches.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    assert any(k.startswith("sobel.encoder.") for k in model.branches.state_dict())

    # 4. ask: the scripted span is dispatched, its features projected and placed at its pads
    fed = []
    embed = model.embed
    model.embed = lambda ids: (fed.append(ids.detach().flatten().tolist()), embed(ids))[1]
    image = data / "images" / "000000.png"
    loop = PerceptionLoop(model, options=LoopOptions(max_new_tokens=8, max_hops=1),
                          policy=ScriptedPolicy(tok, {0: ["<|sobel_action_start|>"]}))
    ans = loop.ask(image, "What number is written on the card?")
    del model.embed
    assert ans.error is None, ans.error
    (hop,) = ans.trace.hops
    assert hop.action == "sobel" and hop.error is None
    (feat,) = hop.features
    assert feat["encoder"] == "sobel_grid" and feat["placeholder"] == "<|sobel_image_pad|>"
    assert feat["num_placeholders"] == 16 and feat["shape"] == [16, 16]
    assert any(ids.count(b.pad_id) == 16 for ids in fed)  # the observation turn: its 16 pad tokens
    # the rows at those pads are the model's projection of the features, conditioned on the control state
    rows = model.project_features("sobel", model.branch_features("sobel", image), torch.randn(64))
    assert rows.shape == (16, 64)

    # ... and through `perceive ask`, with a graph that forces the span (an untrained model would not emit it)
    (tmp_path / "sobel.yaml").write_text("""
name: sobel_then_answer
budget: 1
start: look
nodes:
  look: {kind: action, action: sobel, args: {}, next: answer}
  answer: {kind: generate, next: done}
  done: {kind: answer}
""")
    out = json.loads(run_cli("ask", image, "What number is written on the card?", "--model", path, "--graph",
                             tmp_path / "sobel.yaml", "--max-new-tokens", 6, "--json", site=fake_site))
    (hop,) = out["trace"]["hops"]
    assert hop["action"] == "sobel" and hop["error"] is None and hop["features"][0]["num_placeholders"] == 16
    assert hop["prefilled_tokens"] > 16  # the observation turn with its pads

    # 5. `perceive eval` (oracle spans force each item's own first turn, the sobel span)
    run_cli("eval", "--model", path, "--data", data / "reencode.json", "--oracle-spans", "--max-samples", 2,
            "--max-new-tokens", 6, "--out", tmp_path / "eval", site=fake_site)
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["summary"]["action_counts"] == {"sobel": 2}
    assert all(r["actions"] == ["sobel"] and r["error"] is None for r in result["records"])


def test_a_model_whose_branch_plugin_is_missing_names_it(fake_site, tmp_path):
    from perceive.errors import ModelLoadError
    from perceive.model import load_model, save_model
    from perceive.plugins import get_registry, reset_registry
    from perceive.testing.tiny import tiny_vpt_model

    install(fake_site)
    path = save_model(tiny_vpt_model(branches=("sobel",)), tmp_path / "m")
    assert load_model(path).has_branch("sobel")
    for mod in [m for m in sys.modules if m.startswith("perceive_sobel")]:
        del sys.modules[mod]
    for f in fake_site.iterdir():  # uninstalled
        if f.is_dir():
            for g in f.iterdir():
                g.unlink()
            f.rmdir()
        else:
            f.unlink()
    reset_registry()
    assert "sobel" not in get_registry().branches
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    assert "'sobel' re-encode branch" in str(e.value) and "'perceive-sobel'" in e.value.hint


def test_the_guide_s_worked_example_is_this_plugin():
    """docs/how-to/write-a-plugin.md shows tests/plugins/sobel.py verbatim (from its imports on)."""
    doc = (Path(__file__).resolve().parents[1] / "docs/how-to/write-a-plugin.md").read_text()
    code = PLUGIN.read_text()
    code = code[code.index("from __future__ import annotations"):].rstrip()
    assert f"```python\n{code}\n```" in doc
