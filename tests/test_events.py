"""The loop's event stream: every token fed to the model appears once, in order, with its
provenance; a generated token's log-probability is the log-softmax of the logits it was drawn
from (greedy and sampled); hops, pending calls and the final answer come as events."""

import pytest
import torch

from perceive.loop import (
    ChunkKind,
    Finished,
    HopFinished,
    HopStarted,
    LoopOptions,
    NativeEngine,
    PerceptionLoop,
    Provenance,
    TokenDelta,
)
from perceive.testing.scripted import ScriptedPolicy, span_tokens

REGION = "<|region_token_start|><|x_2|><|y_0|><|x_3|><|y_1|><|region_token_end|>"
DINO = "<|detection_action_start|>"


class FedSpy(NativeEngine):
    """The native engine, recording every chunk it is fed: ``(kind, ids)`` per sample, in order."""

    fed: dict = {}

    def feed(self, key, chunk):
        FedSpy.fed.setdefault(key.index, []).append((chunk.kind, list(chunk.ids)))
        super().feed(key, chunk)


def run(model, photo, script, **opts):
    tok = model.tokenizer
    FedSpy.fed = {}
    loop = PerceptionLoop(model, options=LoopOptions(record_logits=True, **opts), engine=FedSpy,
                          policy=ScriptedPolicy(tok, {0: span_tokens(tok, script)}))
    events = list(loop.stream([(photo, "What is there?")]))
    return events, FedSpy.fed[0]


def deltas(events):
    return [e for e in events if isinstance(e, TokenDelta)]


@pytest.mark.parametrize("script", [f"a {REGION}", DINO], ids=["region", "reencode"])
def test_every_fed_token_is_in_the_stream_once_in_order_with_its_provenance(model, photo, script):
    events, fed = run(model, photo, script, max_new_tokens=16)
    tokens = [(t, d.provenance) for d in deltas(events) for t in d.ids]
    flat = [t for _, ids in fed for t in ids]
    # the stream is the model's context, in feeding order, plus the last token(s) chosen but never fed
    assert [t for t, _ in tokens[:len(flat)]] == flat
    assert all(p in (Provenance.GENERATED, Provenance.FORCED) for _, p in tokens[len(flat):])
    # provenance matches what the engine was fed: the prompt, forced span tokens, observation turns
    at = 0
    for kind, ids in fed:
        marks = [p for _, p in tokens[at:at + len(ids)]]
        at += len(ids)
        if kind is ChunkKind.PROMPT:
            assert set(marks) == {Provenance.PROMPT}
        elif kind is ChunkKind.FORCE:
            assert set(marks) == {Provenance.FORCED}  # a re-encode span's action and end tokens
        elif kind is ChunkKind.OBSERVE:
            # the closing token(s) the model wrote, then the observation turn, all of it marked
            assert Provenance.OBSERVATION in marks
            first = marks.index(Provenance.OBSERVATION)
            assert set(marks[first:]) == {Provenance.OBSERVATION}
            assert set(marks[:first]) <= {Provenance.GENERATED, Provenance.FORCED}
    assert any(k is ChunkKind.OBSERVE for k, _ in fed)
    done = events[-1]
    assert isinstance(done, Finished) and done.trace.hops
    # the answer's ids are the generated and forced tokens, in order
    assert list(done.token_ids) == [t for t, p in tokens if p in (Provenance.GENERATED, Provenance.FORCED)]


@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "temperature": 1.0, "seed": 3}],
                         ids=["greedy", "sampled"])
def test_logprobs_are_the_log_softmax_of_the_logits_at_the_sampled_tokens(model, photo, sampling):
    events, _ = run(model, photo, REGION, max_new_tokens=24, **sampling)
    done = events[-1]
    # one logits row per token the model or the policy chose (not the re-encode span's forced tokens)
    chosen = [(t, d.provenance, None if d.logprobs is None else d.logprobs[k]) for d in deltas(events)
              if d.provenance in (Provenance.GENERATED, Provenance.FORCED) for k, t in enumerate(d.ids)]
    assert len(chosen) == len(done.logits)
    generated = 0
    for (t, provenance, logprob), logits in zip(chosen, done.logits, strict=True):
        if provenance is Provenance.FORCED:  # the script's tokens: the model did not choose them
            assert logprob is None
            continue
        generated += 1
        expected = torch.log_softmax(logits.float(), -1)[t].item()
        assert logprob == pytest.approx(expected, abs=1e-5)
        if not sampling:
            assert t == int(torch.argmax(logits))
    assert generated >= 3  # the model generated after the script and its observation


def test_a_sampled_tokens_logprob_is_under_the_warped_distribution(model, photo):
    """With a temperature and top-k, the log-probability is the one the token was drawn with."""
    events, _ = run(model, photo, REGION, max_new_tokens=24, do_sample=True, temperature=0.7, top_k=5, seed=1)
    done = events[-1]
    chosen = [(t, d.provenance, d.logprobs) for d in deltas(events)
              if d.provenance in (Provenance.GENERATED, Provenance.FORCED) for t in d.ids]
    checked = 0
    for (t, provenance, logprobs), logits in zip(chosen, done.logits, strict=True):
        if provenance is not Provenance.GENERATED:
            continue
        scores = logits.float() / 0.7
        kth = torch.topk(scores, 5).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
        expected = torch.log_softmax(scores, -1)[t].item()
        assert logprobs[0] == pytest.approx(expected, abs=1e-5)
        checked += 1
    assert checked >= 3


def test_hops_come_as_started_then_finished_with_root_boxes(model, photo):
    events, _ = run(model, photo, REGION, max_new_tokens=12)
    started = [e for e in events if isinstance(e, HopStarted)]
    finished = [e for e in events if isinstance(e, HopFinished)]
    assert len(started) == len(finished) == 1
    assert events.index(started[0]) < events.index(finished[0]) < len(events) - 1
    hop = events[-1].trace.hops[0]
    assert (started[0].action, finished[0].hop["action"]) == ("region_select", "region_select")
    assert finished[0].hop["box"] == hop.box and finished[0].hop["views"] == hop.views
    assert finished[0].hop["prefill_ms"] > 0  # closed once its observation was fed


def test_streamed_text_adds_up_to_the_answer(model, photo):
    events, _ = run(model, photo, REGION, max_new_tokens=20)
    done = events[-1]
    # the text of the last turn (after the observation) is the answer
    last = max(i for i, e in enumerate(events) if isinstance(e, TokenDelta) and e.provenance is Provenance.OBSERVATION)
    text = "".join(e.text for e in events[last:] if isinstance(e, TokenDelta))
    assert text.strip() == done.answer


def test_a_sample_refused_at_its_start_still_finishes_in_the_stream(model, photo):
    loop = PerceptionLoop(model)
    events = list(loop.stream([(photo, "   "), (photo, "ok?")]))
    ends = {e.sample: e for e in events if isinstance(e, Finished)}
    assert set(ends) == {0, 1}
    assert ends[0].error["code"] == "input-invalid" and ends[0].trace.total_ms == 0
    assert ends[1].error is None


def test_stream_takes_images_as_ask_does_and_an_unreadable_one_finishes_at_once(model, photo, tmp_path):
    path = tmp_path / "photo.png"
    photo.save(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    ends = {e.sample: e for e in PerceptionLoop(model, options=LoopOptions(max_new_tokens=4)).stream(
        [(str(path), "What is there?"), (broken, "And here?"), (photo, "And here?")]) if isinstance(e, Finished)}
    assert ends[0].error is None and ends[2].error is None
    assert ends[1].error["code"] == "image-unreadable" and ends[1].trace.question == "And here?"
