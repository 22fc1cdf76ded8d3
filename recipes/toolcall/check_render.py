"""Check that training renders a hermes_json item token for token as the loop feeds it at inference.

Runs one converted item through PerceptionLoop (protocol hermes_json, deepeyes response,
declare: false) with a scripted policy that writes the item's call and answer, records every
chunk the loop feeds the model, and compares them with the Collator's encoding of the item.

    python check_render.py data/toolcall-eval.json [MODEL]
"""
import sys

from perceive.data.collate import Collator
from perceive.data.dataset import VPTDataset
from perceive.loop import LoopOptions, PerceptionLoop
from perceive.model import load_model
from perceive.testing.scripted import ScriptedPolicy, span_tokens

data = sys.argv[1]
model = load_model(sys.argv[2] if len(sys.argv) > 2 else "../../models/default", device="cpu", dtype="float32")
ds = VPTDataset(data)
ex = ds[0]
enc = Collator(model).encode(ex)
tok = model.tokenizer
call = ex.messages[1]["content"]
answer = ex.messages[3]["content"]
opts = LoopOptions(max_new_tokens=len(call) + 16, protocol="hermes_json",
                   protocol_options={"response": "deepeyes", "declare": False}, max_hops=2)
script = {0: span_tokens(tok, call), 1: span_tokens(tok, answer + "<|im_end|>")}
loop = PerceptionLoop(model, options=opts, policy=ScriptedPolicy(tok, script))
fed = []
real = loop.observer.feed


def feed(s, chunk):
    fed.append(list(chunk.ids))
    return real(s, chunk)


loop.observer.feed = feed
ans = loop.ask(ex.images["images"][0], ex.messages[0]["content"].replace("<image>", ""))
print("answer", repr(ans.text), "error", ans.error, "hops", [(h.action, h.box) for h in ans.trace.hops])
for c in fed:
    print("CHUNK", repr(tok.decode(c, skip_special_tokens=False))[:300])
train = tok.decode(enc.input_ids, skip_special_tokens=False)
print("TRAIN", repr(train)[:2000])
print("item answer", repr(answer), "token_ids", repr(tok.decode(ans.token_ids, skip_special_tokens=False))[:300])
gen_call = tok.encode(call, add_special_tokens=False)
gen_ans = tok.encode(answer, add_special_tokens=False)
# the observation chunk starts with the call's last id (">"), fed with the turn that follows it
assert fed[1][0] == gen_call[-1]
infer = fed[0] + gen_call[:-1] + fed[1] + gen_ans
assert len(fed) == 2, len(fed)
same = enc.input_ids[:len(infer)] == infer
print("training ids == inference ids (prompt, call, observation turn, answer):", same, len(enc.input_ids),
      len(infer), "rest of training:", repr(tok.decode(enc.input_ids[len(infer):], skip_special_tokens=False)))
sup = [i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100]
print("supervised:", repr(tok.decode(sup, skip_special_tokens=False)))
d = next((k for k, (a, b) in enumerate(zip(enc.input_ids, infer, strict=False)) if a != b), None)
if d is not None:  # where they part, for whoever has to fix it
    near = [repr(tok.decode(ids[max(0, d - 5):d + 5], skip_special_tokens=False)) for ids in (enc.input_ids, infer)]
    print("first difference at", d, "training", near[0], "inference", near[1])
assert same
