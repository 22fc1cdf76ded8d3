"""The online perception loop on tiny random-weight models, with scripted perception spans."""

import json

import pytest
import torch
from PIL import Image

from perceive import hookimpl
from perceive.errors import ImageError
from perceive.loop import LoopOptions, NativeEngine, PerceptionLoop
from perceive.model.positions import sequence_positions
from perceive.plugins import load_registry
from perceive.testing.images import real_photos
from perceive.testing.scripted import ScriptedPolicy, span_tokens
from perceive.testing.tiny import tiny_vpt_model
from perceive.trace import Trace

REGION = "<|region_token_start|><|x_2|><|y_0|><|x_3|><|y_1|><|region_token_end|>"
DINO = "<|detection_action_start|>"
SAM = "<|seg_action_start|>"
NATIVE = "<|clip_action_start|>"


def make_loop(model, scripts, registry=None, **opts):
    opts.setdefault("max_new_tokens", 24)
    tok = model.tokenizer
    return PerceptionLoop(model, registry=registry, options=LoopOptions(**opts),
                          policy=ScriptedPolicy(tok, {i: span_tokens(tok, s) for i, s in scripts.items()}))


class LMSpy:
    """Records the length of every chunk of tokens fed to the language model."""

    def __init__(self, model, monkeypatch):
        self.calls = []
        real = model.lm

        def lm(embeds, *a, **k):
            self.calls.append(embeds.shape[1])
            return real(embeds, *a, **k)

        monkeypatch.setattr(model, "lm", lm)


@pytest.mark.parametrize("script", [REGION, DINO, SAM, NATIVE, f"a {REGION}"], ids=["region", "dino", "sam",
                                                                                   "native", "text+region"])
def test_online_equals_reprefill(model, photo, script):
    online = make_loop(model, {0: script}, record_logits=True).ask(photo, "What is there?")
    ref = make_loop(model, {0: script}, record_logits=True, reprefill=True).ask(photo, "What is there?")
    assert online.ok and ref.ok
    assert len(online.trace.hops) == 1
    assert online.token_ids == ref.token_ids
    assert len(online.logits) == len(ref.logits)
    for a, b in zip(online.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_hops_prefill_only_new_tokens(model, photo, monkeypatch):
    spy = LMSpy(model, monkeypatch)
    ans = make_loop(model, {0: REGION}).ask(photo, "What is there?")
    hop = ans.trace.hops[0]
    tok = model.tokenizer
    # what an observation turn is: the closing token, the end of the assistant turn, a user turn
    # with the crop's image tokens, the next assistant header
    grid = model.image_processor(images=[Image.new("RGB", (256, 192))], return_tensors="pt")["image_grid_thw"][0]
    n_img = int(grid.prod()) // 4
    expected = 1 + len(tok.encode("<|im_end|>\n<|im_start|>user\n<|vision_start|><|vision_end|><|im_end|>\n"
                                  "<|im_start|>assistant\n", add_special_tokens=False)) + n_img
    assert hop.prefilled_tokens == expected
    # prompt once, then one token per step, except the one observation chunk
    assert spy.calls[0] == ans.trace.prompt_tokens
    assert spy.calls.count(expected) == 1
    assert all(c == 1 for i, c in enumerate(spy.calls[1:], 1) if c != expected)
    # the reference-style path instead re-feeds the whole conversation
    spy.calls.clear()
    make_loop(model, {0: REGION}, reprefill=True).ask(photo, "What is there?")
    assert max(spy.calls) == ans.trace.prompt_tokens + (len(span_tokens(tok, REGION)) - 1) + expected


def test_trace_records_the_hop(model, photo):
    ans = make_loop(model, {0: REGION}).ask(photo, "What is there?")
    hop = ans.trace.hops[0]
    assert hop.action == "region_select" and hop.tokens[0] == "<|region_token_start|>"
    assert hop.args["xs"] == [2, 3] and hop.args["ys"] == [0, 1]
    assert hop.box == {"x0": 64, "y0": 0, "x1": 320, "y1": 192, "frame": "root"}
    assert hop.views[0]["parent"] == "root" and hop.decoded_tokens == len(span_tokens(model.tokenizer, REGION))
    assert hop.dispatch_ms >= 0 and hop.prefill_ms > 0
    again = Trace.from_dict(json.loads(ans.trace.to_json()))
    assert again == ans.trace


def test_encoder_runs_once_per_image_per_session(model, photo, monkeypatch):
    loop = make_loop(model, {0: DINO, 1: DINO})
    enc = loop.hub.get("dinov2_small")
    calls = []
    real = enc.encode
    monkeypatch.setattr(enc, "encode", lambda im: calls.append(im.size) or real(im))
    first = loop.ask(photo, "What is there?")
    second = loop.ask(photo.copy(), "And now?")
    assert calls == [photo.size]
    assert (first.trace.hops[0].encoder_cache_misses, first.trace.hops[0].encoder_cache_hits) == (1, 0)
    assert (second.trace.hops[0].encoder_cache_misses, second.trace.hops[0].encoder_cache_hits) == (0, 1)


def test_batch_equals_one_at_a_time(model, photo):
    photos = real_photos()
    items = [(photo, "What is there?"), (photos["coffee"], "Which drink?"), (photos["chelsea"], "Which animal?"),
             (photo, "Again?")]
    scripts = {0: REGION, 1: DINO, 3: f"hm {REGION}"}  # sample 2 takes no perception call
    batch = make_loop(model, scripts).ask_batch(items)
    for i, (img, q) in enumerate(items):
        single = make_loop(model, {0: scripts[i]} if i in scripts else {}).ask(img, q)
        assert batch[i].token_ids == single.token_ids, i
        assert [h.action for h in batch[i].trace.hops] == [h.action for h in single.trace.hops]
        assert batch[i].text == single.text


def test_malformed_span_is_recorded_and_generation_goes_on(model, photo):
    bad = "<|region_token_start|><|x_1|><|region_token_end|>"
    ans = make_loop(model, {0: bad}).ask(photo, "What is there?")
    assert ans.ok and not ans.trace.hops
    assert ans.trace.events[0]["type"] == "parse_error" and ans.trace.events[0]["kind"] == "missing_y"
    assert len(ans.token_ids) > len(span_tokens(model.tokenizer, bad))  # it kept generating
    stop = make_loop(model, {0: bad}, on_malformed="stop").ask(photo, "What is there?")
    assert stop.trace.finish_reason == "malformed" and len(stop.token_ids) == len(span_tokens(model.tokenizer, bad))


def test_plugin_failure_finishes_that_sample_only(model, photo):
    class Veto:
        @hookimpl
        def perceive_before_action(self, context):
            if context.root.size == photo.size:
                raise RuntimeError("camera offline")

    registry = load_registry([("veto", Veto())])
    coffee = real_photos()["coffee"]
    out = make_loop(model, {0: REGION, 1: REGION}, registry=registry).ask_batch(
        [(photo, "What?"), (coffee, "What?")])
    assert out[0].error["type"] == "action_failed" and "camera offline" in out[0].error["message"]
    assert out[0].trace.hops[0].error["stage"] == "before"
    assert out[1].ok and out[1].trace.hops[0].views


def test_budget(model, photo):
    ans = make_loop(model, {0: REGION + REGION}, max_hops=0).ask(photo, "What?")
    assert not ans.trace.hops
    assert [e["type"] for e in ans.trace.events][:2] == ["budget_exhausted", "budget_exhausted"]


def test_max_new_tokens_and_unclosed_span(model, photo):
    ans = make_loop(model, {0: "<|region_token_start|><|x_1|>"}, max_new_tokens=2).ask(photo, "What?")
    assert ans.trace.finish_reason == "max_new_tokens"
    assert ans.trace.events[-1]["kind"] == "unclosed"


def test_unreadable_image(model, tmp_path, photo):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"garbage")
    loop = make_loop(model, {})
    with pytest.raises(ImageError):
        loop.ask(bad, "What?")
    out = make_loop(model, {1: REGION}).ask_batch([(bad, "What?"), (photo, "What?")])
    assert out[0].error["type"] == "ImageError" and out[1].ok and out[1].trace.hops


def test_wrong_size_features_are_a_typed_error(model, photo, monkeypatch):
    loop = make_loop(model, {0: DINO})
    monkeypatch.setattr(loop.hub, "features", lambda name, image: torch.zeros(10, 32))
    ans = loop.ask(photo, "What?")
    assert ans.trace.finish_reason == "observation_invalid"
    assert ans.error["type"] == "ObservationError" and "10 projected rows for 256 placeholders" in ans.error["message"]


def test_iterative_region_selection_maps_back(model, photo):
    """Two region hops: the second span's cells are read in the first crop's frame. (Injected
    observation turns are not model choices, so the script resumes right after the first one.)"""
    second = "<|region_token_start|><|x_0|><|y_7|><|region_token_end|>"
    ans = make_loop(model, {0: REGION + second}, max_hops=2, max_new_tokens=40).ask(photo, "What?")
    h1, h2 = ans.trace.hops
    assert h1.box == {"x0": 64, "y0": 0, "x1": 320, "y1": 192, "frame": "root"}
    assert h2.target == h1.views[0]["id"] and h2.views[0]["parent"] == h1.views[0]["id"]
    # cells x 0..1, y 6..7 of the 256x192 crop -> (0, 144, 64, 192) in the crop -> +(64, 0)
    assert h2.box == {"x0": 64, "y0": 144, "x1": 128, "y1": 192, "frame": "root"}
    root = make_loop(model, {0: REGION + second}, max_hops=2, max_new_tokens=40, target="root").ask(photo, "What?")
    assert root.trace.hops[1].box == {"x0": 0, "y0": 384, "x1": 128, "y1": 512, "frame": "root"}


class RecordingEngine(NativeEngine):
    """The native engine, keeping every chunk it ran with its position ids."""

    def __init__(self, model):
        super().__init__(model)
        self.log, compute = [], self.positions
        self.positions = lambda start, chunk: self.log.append((chunk, compute(start, chunk))) or self.log[-1][1]

    def ran(self):
        ids = [i for c, _ in self.log for i in c.ids]
        grids = [r.tolist() for c, _ in self.log for _, g in c.images for r in g.reshape(-1, 3)]
        return ids, grids, torch.cat([p for _, (p, _) in self.log], dim=1)


def recording(loop):
    engines = []
    loop.engine = lambda model: engines.append(RecordingEngine(model)) or engines[-1]
    return engines


def test_segment_positions_equal_a_full_pass(model, photo):
    """M-RoPE positions of appended segments equal those of the whole sequence at once, and
    transformers' own get_rope_index."""
    loop = make_loop(model, {0: REGION})
    engines = recording(loop)
    loop.ask(photo, "What?")
    ids, grids, incremental = engines[0].ran()
    full, _ = sequence_positions(ids, model.config.special.image_pad, grids, 2)
    assert torch.equal(incremental, full)
    t = torch.tensor([ids])
    hf, _ = model.base.model.get_rope_index(t, mm_token_type_ids=(t == model.config.special.image_pad).int(),
                                            image_grid_thw=torch.tensor(grids))
    assert torch.equal(hf[:, 0], full)
    with pytest.raises(ValueError, match="'mrope' or 'sequential'"):
        sequence_positions(ids, model.config.special.image_pad, grids, 2, positions="sequentail")


def test_qwen2_5_vl_base(photo):
    m = tiny_vpt_model("qwen2_5_vl", branches=("dino",))
    online = make_loop(m, {0: REGION}).ask(photo, "What?")
    ref = make_loop(m, {0: REGION}, reprefill=True).ask(photo, "What?")
    assert online.trace.hops[0].views and online.token_ids == ref.token_ids


def test_encoder_swapped_through_config(photo, tmp_path):
    """A plugin adds an encoder; the config points the dino action at it; a mismatched one is
    refused before anything runs."""
    from perceive import EncoderSpec
    from perceive.config import PerceiveConfig
    from perceive.errors import ConfigError
    from perceive.model import save_model

    class Grey:
        calls = 0

        def encode(self, image):
            Grey.calls += 1
            return torch.full((256, 32), float(sum(image.convert("L").resize((4, 4)).tobytes()) % 7))

    class Plugin:
        @hookimpl
        def perceive_register_encoders(self):
            return [EncoderSpec(name="grey32", family="test", layout="tokens", feature_dim=32, placeholders=256,
                                build=lambda **kw: Grey()),
                    EncoderSpec(name="grey64", family="test", layout="tokens", feature_dim=64, placeholders=256,
                                build=lambda **kw: Grey())]

    registry = load_registry([("grey", Plugin())])
    path = save_model(tiny_vpt_model(branches=("dino",)), tmp_path / "m")
    cfg = PerceiveConfig.model_validate({"model": {"path": str(path)}, "device": "cpu",
                                         "actions": {"region_select": {}, "dino": {"encoder": "grey32"}},
                                         "runtime": {"max_new_tokens": 12}})
    tok = tiny_vpt_model(branches=("dino",)).tokenizer
    loop = PerceptionLoop.from_config(cfg, registry=registry, policy=ScriptedPolicy(tok, {0: span_tokens(tok, DINO)}))
    ans = loop.ask(photo, "What?")
    assert ans.ok and ans.trace.hops[0].features[0]["encoder"] == "grey32" and Grey.calls == 1
    cfg.actions["dino"].encoder = "grey64"
    with pytest.raises(ConfigError, match="'grey64' gives 64-wide features but the model's dino projector takes 32"):
        PerceptionLoop.from_config(cfg, registry=registry)


def test_extreme_view_is_a_typed_error_not_a_crash(model):
    """A crop Qwen2-VL's processor cannot take (aspect ratio over 200) fails that sample only."""
    wide = Image.new("RGB", (3000, 19), "white")  # 158:1, an input it takes
    span = "<|region_token_start|><|x_0|><|x_7|><|y_3|><|region_token_end|>"  # the whole row: a 3000x7 crop
    out = make_loop(model, {0: span}).ask_batch([(wide, "What?"), (real_photos()["coffee"], "What?")])
    assert out[0].error is not None and out[0].error["type"] in ("ObservationError",)
    assert out[0].error["hint"] == "choose a less extreme region"  # the model chose it: addressed to the model
    assert out[1].ok


def test_sampling_is_seeded_and_top_k_1_is_greedy(model, photo):
    greedy = make_loop(model, {}, max_new_tokens=8).ask(photo, "What?")
    top1 = make_loop(model, {}, max_new_tokens=8, do_sample=True, top_k=1, temperature=0.7).ask(photo, "What?")
    assert top1.token_ids == greedy.token_ids
    a = make_loop(model, {}, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3).ask(photo, "What?")
    b = make_loop(model, {}, max_new_tokens=8, do_sample=True, temperature=1.5, seed=3).ask(photo, "What?")
    assert a.token_ids == b.token_ids


def test_sequential_positions_model_runs_as_trained(photo, tmp_path):
    """A model trained with 1-D positions (``positions: sequential`` in perceive.json) keeps them
    through save/load, and the loop gives every token, image tokens included, its own index."""
    from perceive.data.collate import Collator
    from perceive.model import load_model, save_model

    model = tiny_vpt_model(branches=())
    model.config.positions = "sequential"
    model = load_model(save_model(model, tmp_path / "m"))
    assert model.config.positions == "sequential"
    loop = make_loop(model, {0: REGION})
    engines = recording(loop)
    assert loop.ask(photo, "What?").ok
    pos = engines[0].ran()[2]
    assert torch.equal(pos, torch.arange(pos.shape[1]).expand(3, -1))  # images included (M-RoPE would repeat)
    online = make_loop(model, {0: REGION}, record_logits=True).ask(photo, "What?")
    ref = make_loop(model, {0: REGION}, record_logits=True, reprefill=True).ask(photo, "What?")
    for a, b in zip(online.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert Collator(model).positions == "sequential"


class JoinSpy(NativeEngine):
    """Notes each time samples join a batch that already has a past."""

    joins: list[tuple[int, int]] = []

    def _join(self, keys):
        past = 0 if self.mask is None else self.mask.shape[1]
        if past:
            JoinSpy.joins.append((len(self.rows), past))
        super()._join(keys)


def test_a_sample_that_joins_a_running_batch_gets_the_tokens_it_gets_alone(model, photo):
    photos = real_photos()
    items = [(photo, "What?"), (photos["coffee"], "Which drink?"), (photos["chelsea"], "Which animal?")]
    # sample 0 answers at once; 1 keeps going; 2 waits for a free slot and joins mid-way
    scripts = {0: "7<|im_end|>", 1: f"hm {REGION}", 2: REGION}
    JoinSpy.joins = []
    loop = make_loop(model, scripts, max_new_tokens=20, max_batch_size=2)
    loop.engine = JoinSpy
    batch = loop.ask_batch(items)
    assert JoinSpy.joins and JoinSpy.joins[0][0] == 1  # it joined beside sample 1, which had a past
    for i, (img, q) in enumerate(items):
        alone = make_loop(model, {0: scripts[i]}, max_new_tokens=20).ask(img, q)
        assert batch[i].token_ids == alone.token_ids, i
        assert [h.box for h in batch[i].trace.hops] == [h.box for h in alone.trace.hops]


def test_one_vision_tower_call_per_step(model, photo, monkeypatch):
    calls = []
    real = model.image_embeds
    monkeypatch.setattr(model, "image_embeds", lambda pv, grid: calls.append(grid.shape[0]) or real(pv, grid))
    photos = list(real_photos().values())
    items = [(photos[i % len(photos)], "What?") for i in range(4)]
    answers = make_loop(model, {i: REGION for i in range(4)}).ask_batch(items)
    assert all(len(a.trace.hops) == 1 for a in answers)
    assert calls == [4, 4]  # the four first images in one call, the four crops in another


class CacheSpy(NativeEngine):
    """Records the cache length after each step."""

    lengths: list[int] = []

    def step(self):
        out = super().step()
        CacheSpy.lengths.append(self.mask.shape[1])
        return out


def test_the_cache_of_a_running_batch_stays_as_long_as_its_samples(model, photo):
    """Samples keep joining as others leave, so the batch never empties: the cache must drop what
    only finished samples used, or it grows with every sample ever run."""
    photos = list(real_photos().values())
    items = [(photos[i % len(photos)], "What?") for i in range(8)]
    scripts = {i: "a " * (1 + 3 * (i % 3)) + "<|im_end|>" for i in range(8)}
    CacheSpy.lengths = []
    loop = make_loop(model, scripts, max_new_tokens=20, max_batch_size=2)
    loop.engine = CacheSpy
    batch = loop.ask_batch(items)
    context = max(a.trace.prompt_tokens + a.trace.generated_tokens for a in batch)
    assert max(CacheSpy.lengths) <= 2 * context  # two samples run at once
    for i, (img, q) in enumerate(items):
        assert batch[i].token_ids == make_loop(model, {0: scripts[i]}, max_new_tokens=20).ask(img, q).token_ids, i
