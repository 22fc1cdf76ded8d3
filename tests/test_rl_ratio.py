"""GRPO's importance ratio starts at 1: for a fresh policy, the teacher-forced forward of a rollout
(supervised training's forward, on the exact ids, images, crops and re-encode features the loop
fed) gives back the log-probabilities the loop sampled with, token for token. Checked for the
``vpt`` protocol (a region crop), ``hermes_json`` (a JSON tool call, then its crop) and a model
with a re-encode branch (features projected on the span's control state), greedy and sampled."""

import pytest
import torch

from perceive.loop import LoopOptions, PerceptionLoop
from perceive.loop.events import Provenance
from perceive.loop.sampling import Sampler
from perceive.rl.trajectory import Trajectory, score
from perceive.testing.scripted import ScriptedPolicy, span_tokens
from perceive.testing.tiny import tiny_vpt_model

REGION = "<|region_token_start|><|x_2|><|y_0|><|x_3|><|y_1|><|region_token_end|>"
HERMES = '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [8, 4, 120, 96]}}\n</tool_call>'
DINO = "<|detection_action_start|>"
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 40, "top_p": 0.95}


@pytest.fixture(scope="module")
def region_model():
    return tiny_vpt_model(branches=())


@pytest.fixture(scope="module")
def dino_model():
    return tiny_vpt_model(branches=("dino",))


def rollouts(model, photo, script, n=3, **opts):
    """``n`` rollouts of one question whose first tokens are ``script`` (forced: a random model
    would rarely call), then whatever the model samples after the observation."""
    tok = model.tokenizer
    options = LoopOptions(max_new_tokens=len(span_tokens(tok, script)) + 12, seed=5, **opts)
    loop = PerceptionLoop(model, options=options, policy=ScriptedPolicy(tok, {i: span_tokens(tok, script)
                                                                             for i in range(n)}))
    events: dict[int, list] = {}
    for ev in loop.stream([(photo, "What is written here?")] * n):
        events.setdefault(ev.sample, []).append(ev)
    return [Trajectory.from_events(events[i]) for i in range(n)]


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("case", ["vpt", "hermes_json", "reencode"])
def test_a_fresh_policys_recomputed_logprobs_equal_the_rollouts(case, sampled, region_model, dino_model, photo):
    model = dino_model if case == "reencode" else region_model
    script, protocol = {"vpt": (REGION, "vpt"), "hermes_json": (HERMES, "hermes_json"),
                        "reencode": (DINO, "vpt")}[case]
    sampling = SAMPLING if sampled else {}
    trajs = rollouts(model, photo, script, protocol=protocol, **sampling)
    for t in trajs:
        assert t.finished.trace.hops and not t.finished.trace.hops[0].error  # the call ran and was shown
        assert Provenance.OBSERVATION in t.provenance and t.num_generated >= 3
    if case == "reencode":
        assert all(len(t.features) >= 1 for t in trajs)
    else:
        assert all(len(t.images) == 2 for t in trajs)  # the image and the crop
    warpers = Sampler(**sampling).warpers if sampled else None
    with torch.no_grad():
        scored = score(model, trajs, warpers)
    for t, lp in zip(trajs, scored.logprobs, strict=True):
        old = torch.tensor(t.old_logprobs)
        assert lp.shape == old.shape
        ratio = torch.exp(lp - old)
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4), (ratio, lp, old)


def test_the_recomputed_logprobs_carry_gradients_to_the_projector_and_the_language_model(dino_model, photo):
    trajs = rollouts(dino_model, photo, DINO, n=2)
    dino_model.zero_grad()
    scored = score(dino_model, trajs)
    torch.stack([lp.sum() for lp in scored.logprobs]).sum().backward()
    proj = [p.grad for n, p in dino_model.named_parameters() if n.startswith("branches.dino.projector")]
    lm = [p.grad for n, p in dino_model.named_parameters() if "language_model" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in proj)
    assert any(g is not None and g.abs().sum() > 0 for g in lm)
    dino_model.zero_grad()


def test_a_span_past_the_hop_budget_keeps_its_control_state_without_features(dino_model, photo):
    """Two re-encode spans, one hop allowed: the second goes unanswered (no features) but is still
    fed with its control state; the recomputed log-probabilities still match."""
    trajs = rollouts(dino_model, photo, DINO + "a" + DINO, n=2, max_hops=1)
    for t in trajs:
        assert len(t.features) == 1 and len(t.finished.trace.hops) == 1
    with torch.no_grad():
        scored = score(dino_model, trajs)
    for t, lp in zip(trajs, scored.logprobs, strict=True):
        assert torch.allclose(lp, torch.tensor(t.old_logprobs), atol=1e-4)
