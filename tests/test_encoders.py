"""Encoder registry, the cached hub, and the reference encoders built tiny."""

import pytest
import torch
from PIL import Image

from perceive import ActionCall, ActionContext, dispatch
from perceive.encoders import EncoderHub
from perceive.errors import EncoderUnavailableError, UnknownEncoderError
from perceive.reencode import ReencodeArgs
from perceive.testing import real_photos


@pytest.fixture
def hub(registry):
    return EncoderHub(registry.encoder_specs(), tiny=True)


@pytest.mark.parametrize(("name", "shape"), [("dinov2_large", (256, 32)), ("sam_vit_l", (256, 64, 64)),
                                             ("native", None)])
def test_tiny_reference_encoders(hub, name, shape):
    out = hub.features(name, real_photos()["chelsea"])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if shape:
        assert tuple(out.shape) == shape
    else:  # merged Qwen2-VL tokens: (t*h*w/4, hidden)
        assert out.ndim == 2 and out.shape[1] == 64


def test_encoder_runs_once_per_image(hub, registry):
    """Within a hub, the same pixels are never encoded twice, whichever view carries them."""
    calls = []
    enc = hub.get("dinov2_large")
    real = enc.encode
    enc.encode = lambda im: calls.append(im.size) or real(im)
    photo = real_photos()["astronaut"]
    dino = registry.action("dino")
    for _ in range(3):
        ctx = ActionContext.for_image(photo.copy(), encoders=hub)
        res = dispatch(registry.pm, dino, ActionCall("dino", ReencodeArgs()), ctx)
        assert res.ok and res.observation[0].num_placeholders == 256
    assert calls == [(512, 512)]
    assert (hub.stats["dinov2_large"].hits, hub.stats["dinov2_large"].misses) == (2, 1)
    hub.features("dinov2_large", real_photos()["coffee"])
    assert len(calls) == 2


def test_reencode_uses_configured_encoder_and_rejects_wrong_layout(registry, hub):
    photo = Image.new("RGB", (64, 64), "white")
    dino = registry.action("dino")
    ctx = ActionContext.for_image(photo, encoders=hub, options={"encoder": "dinov2_small"})
    res = dispatch(registry.pm, dino, ActionCall("dino", ReencodeArgs()), ctx)
    assert res.observation[0].encoder == "dinov2_small"
    res = dispatch(registry.pm, dino, ActionCall("dino", ReencodeArgs(encoder="sam_vit_b")), ctx)
    assert res.failure.typed and "takes tokens features but encoder 'sam_vit_b' gives a map" in res.failure.message


def test_unknown_encoder_and_missing_weights(registry):
    hub = EncoderHub(registry.encoder_specs())
    with pytest.raises(UnknownEncoderError, match="did you mean 'dinov2_large'"):
        hub.get("dinov2_lrge")
    with pytest.raises(EncoderUnavailableError, match="encoders.sam_vit_b.weights"):
        hub.get("sam_vit_b")
    with pytest.raises(EncoderUnavailableError, match="no model is loaded"):
        hub.get("native")


def test_sam_loads_official_checkpoint_strictly(tmp_path):
    from perceive_sam import encoder as sam

    net = sam.image_encoder("tiny", img_size=256, patch_size=4, depth=2, embed_dim=16, num_heads=2,
                            global_attn_indexes=(1,))
    state = {f"image_encoder.{k}": v for k, v in net.state_dict().items()}
    state["mask_decoder.x"] = torch.zeros(1)  # other SAM parts are ignored
    path = tmp_path / "sam.pth"
    torch.save(state, path)
    other = sam.image_encoder("tiny", img_size=256, patch_size=4, depth=2, embed_dim=16, num_heads=2,
                              global_attn_indexes=(1,))
    sam.load_official(other, str(path))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values(), strict=True))
    del state["image_encoder.neck.0.weight"]
    torch.save(state, path)
    from perceive.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"missing \['neck.0.weight'\]"):
        sam.load_official(other, str(path))


def test_dinov2_loads_a_local_folder(tmp_path):
    from perceive_dino import encoder as dino
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(tmp_path)
    enc = dino.build(weights=tmp_path, options={})
    assert tuple(enc.encode(Image.new("RGB", (300, 200))).shape) == (256, 32)


@pytest.mark.parametrize("branch", ["dino", "sam"])
def test_an_encoder_built_on_the_models_own_branch_leaves_the_model_as_it_was(branch):
    from perceive.encoders import EncoderHub
    from perceive.plugins import get_registry
    from perceive.testing.tiny import tiny_vpt_model

    model = tiny_vpt_model(branches=(branch,))
    module = model.branch_encoder(branch)
    model.train()
    hub = EncoderHub(get_registry().encoder_specs(), model=model)
    hub.get(model.branch_config(branch).encoder)
    assert module.training  # not switched to eval behind the model's back
    assert next(module.parameters()).device == model.device
