"""Metrics, the LLM judge (against a local endpoint), and the evaluator end to end."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from perceive.data.cards import generate
from perceive.eval import EvalConfig, anls, evaluate, exact_match, relaxed_accuracy
from perceive.eval.judge import Judge, JudgeConfig
from perceive.eval.runner import markdown, question_of
from perceive.testing.scripted import ScriptedPolicy, span_tokens
from perceive.testing.tiny import tiny_vpt_model


def test_metrics():
    assert exact_match(" 042. ", "042") == 1.0 and exact_match("42", "042") == 0.0
    assert anls("042", "042") == 1.0 and anls("043", "042") == pytest.approx(2 / 3) and anls("9", "042") == 0.0
    assert relaxed_accuracy("104", "100") == 1.0 and relaxed_accuracy("106", "100") == 0.0
    assert relaxed_accuracy("cat", "Cat") == 1.0


def test_question_strips_placeholders_and_trigger_prompts():
    q = "<image>What number is written on the card? \nIdentify the region that can help you answer the question, and " \
        "then answer the question."
    assert question_of(q) == "What number is written on the card?"


class FakeEndpoint(BaseHTTPRequestHandler):
    replies: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeEndpoint.seen.append(body)
        kind = FakeEndpoint.replies.pop(0) if FakeEndpoint.replies else "score: 1"
        if kind == "500":
            self.send_response(500)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"choices": [{"message": {"content": kind}}]}).encode())

    def log_message(self, *a):
        pass


@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeEndpoint.replies, FakeEndpoint.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_judge_scores_retries_and_counts_failures_apart(endpoint):
    judge = Judge(JudgeConfig(base_url=endpoint, retries=2, backoff=0.01, timeout=5))
    FakeEndpoint.replies = ["score: 0.5"]
    assert judge.score("Q?", "042", "043") == 0.5
    body = FakeEndpoint.seen[-1]
    assert body["temperature"] == 0.0 and "Standard answer: 042" in body["messages"][0]["content"]
    FakeEndpoint.replies = ["500", "no number here", "score: 1"]
    assert judge.score("Q?", "042", "042") == 1.0  # after two failed attempts
    FakeEndpoint.replies = ["500", "500", "500"]
    assert judge.score("Q?", "042", "x") is None and judge.failures == 1  # not a silent 0
    dead = Judge(JudgeConfig(base_url="http://127.0.0.1:9/v1", retries=0, timeout=1))
    assert dead.score("Q", "a", "b") is None and dead.failures == 1


def test_evaluate_end_to_end_with_an_oracle_policy(tmp_path, endpoint):
    data = generate(tmp_path / "cards", 4, seed=3, split="eval")
    cards = json.loads((data / "cards.json").read_text())["cards"]
    items = json.loads((data / "region.json").read_text())
    model = tiny_vpt_model(branches=())
    tok = model.tokenizer
    # the oracle emits the ground-truth span, then (after the crop) the number and <|im_end|>
    scripts = {i: span_tokens(tok, items[i]["messages"][1]["content"]) + span_tokens(tok, c["number"]) + ["<|im_end|>"]
               for i, c in enumerate(cards)}
    cfg = EvalConfig(model=tmp_path, data=data / "region.json", graph="region_then_answer", batch_size=4,
                     max_new_tokens=16, output=tmp_path / "out", judge={"base_url": endpoint, "retries": 0})
    FakeEndpoint.replies = ["score: 1"] * 3 + ["500"]
    result = evaluate(cfg, model=model, policy=ScriptedPolicy(tok, scripts), progress=False)
    s = result["summary"]
    assert s["exact_match"] == 1.0 and s["anls"] == 1.0 and s["crop_iou"] == 1.0
    assert s["action_counts"] == {"region_select": 4} and s["samples_with_a_hop"] == 1.0
    assert s["judge"] == 1.0 and s["judge_failures"] == 1  # three scored, one failed apart
    assert (tmp_path / "out/eval.json").exists() and "| exact match |" in (tmp_path / "out/eval.md").read_text()
    plain = evaluate(EvalConfig(model=tmp_path, data=data / "plain.json", graph="free_choice", max_new_tokens=3),
                     model=model, progress=False)
    assert plain["summary"]["exact_match"] == 0.0 and plain["summary"]["crop_iou"] is None
    table = markdown([result, plain])
    assert table.count("\n") == 4 and "judge" in table


def test_oracle_spans_force_the_ground_truth_region_then_the_model_answers(tmp_path):
    data = generate(tmp_path / "cards", 3, seed=4, split="eval", margin=0)
    model = tiny_vpt_model(branches=())
    cfg = EvalConfig(model=tmp_path, data=data / "region.json", graph="free_choice", batch_size=2,
                     max_new_tokens=10, oracle_spans=True, action_options={"region_select": {"margin": 0}})
    result = evaluate(cfg, model=model, progress=False)
    # every sample crops exactly its ground-truth cells; what follows is the untrained model's own
    assert result["summary"]["crop_iou"] == 1.0 and result["summary"]["action_counts"]["region_select"] >= 3
    assert all(r["actions"][0] == "region_select" for r in result["records"])


def test_eval_compare_cli_puts_runs_side_by_side(tmp_path):
    import subprocess
    import sys

    data = generate(tmp_path / "cards", 2, seed=5, split="eval")
    model = tiny_vpt_model(branches=())
    for name in ("one", "two"):
        evaluate(EvalConfig(model=tmp_path, data=data / "plain.json", name=name, max_new_tokens=2,
                            output=tmp_path / name), model=model, progress=False)
    out = subprocess.run([sys.executable, "-m", "perceive", "eval", "compare", str(tmp_path / "one"),
                          str(tmp_path / "two" / "eval.json"), "--out", str(tmp_path / "t.md")],
                         capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in (tmp_path / "t.md").read_text().splitlines() if line.startswith("| one") or
            line.startswith("| two")]
    assert len(rows) == 2
    bad = subprocess.run([sys.executable, "-m", "perceive", "eval", "compare", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""})
    assert bad.returncode == 1 and "cannot read the run" in bad.stdout
