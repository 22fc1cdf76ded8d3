"""§2.6-2.8 semantics beyond the recorded numbers: label masking and where gradients flow."""

import pytest
import torch

from perceive.model.vpt import IGNORE_INDEX, mask_action_labels
from perceive.testing.tiny import tiny_vpt_model
from tests.test_parity import FIXTURES, _require_fixtures


def test_action_label_masking_matches_the_reference():
    _require_fixtures()
    from perceive.model import load_model

    model = load_model(FIXTURES / "dino")
    inputs = torch.load(FIXTURES / "dino" / "inputs.pt", weights_only=True)
    ids, ref = inputs["input_ids"], inputs["labels"]
    action = model.config.branches["dino"]
    unmasked = torch.where(ids == action.action_id, ids, ref)  # as if the action token were supervised
    assert (unmasked != ref).any()
    assert torch.equal(mask_action_labels(unmasked, ids, model.config), ref)
    assert (ref[ids == action.start_id] != IGNORE_INDEX).all()  # start and end stay supervised


@pytest.mark.parametrize("reference_no_grad", [True, False])
def test_gradients_flow_as_in_the_reference(reference_no_grad):
    model = tiny_vpt_model(branches=("dino",)).train()
    tok = model.tokenizer
    cfg = model.config
    b = cfg.branches["dino"]
    ids = [cfg.special.im_start] + tok.encode("user\nq", add_special_tokens=False) + [
        cfg.special.im_end, cfg.special.im_start] + tok.encode("assistant\n", add_special_tokens=False) + [
        b.start_id, b.action_id, b.end_id, cfg.special.im_end, cfg.special.im_start] + tok.encode(
        "user\n", add_special_tokens=False) + [cfg.special.vision_start] + [b.pad_id] * 256 + [
        cfg.special.vision_end, cfg.special.im_end] + tok.encode("a", add_special_tokens=False)
    input_ids = torch.tensor([ids])
    labels = mask_action_labels(input_ids.clone(), input_ids, cfg)
    out = model(input_ids=input_ids, labels=labels, detection_images=torch.randn(1, 3, 224, 224),
                reference_no_grad=reference_no_grad)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["branches.dino.projector.linear_condition.weight"].abs().sum() > 0  # through the control state
    assert grads["branches.dino.projector.linear_feature.weight"].abs().sum() > 0
    assert grads["base.model.language_model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    assert grads["base.lm_head.weight"].abs().sum() > 0
    if reference_no_grad:  # the lookup, the vision tower and the extra encoder: no gradient (§2.6 step 0)
        assert grads["base.model.language_model.embed_tokens.weight"] is None
        encoders = ("base.model.visual.", "branches.dino.encoder.")
        assert all(g is None for n, g in grads.items() if n.startswith(encoders))
    else:  # by default they train unless frozen
        assert grads["base.model.language_model.embed_tokens.weight"].abs().sum() > 0
        assert grads["branches.dino.encoder.embeddings.patch_embeddings.projection.weight"].abs().sum() > 0


def test_control_state_carries_gradient_through_the_first_pass():
    """The second pass's loss reaches the first pass only through the control vector."""
    model = tiny_vpt_model(branches=("native",)).train()
    cfg = model.config
    b = cfg.branches["native"]
    input_ids = torch.tensor([[cfg.special.im_start, 40, 41, b.start_id, b.action_id, b.end_id, 42, 43]])
    out = model(input_ids=input_ids, labels=input_ids.clone())
    first = torch.autograd.grad(out.loss, out.first_hidden, retain_graph=True)[0]
    start = 3
    assert first[0, start].abs().sum() > 0  # the state at the start token is the control signal
    assert first[0, start + 1:].abs().sum() == 0  # later first-pass states are not used
