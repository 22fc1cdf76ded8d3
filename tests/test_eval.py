"""Metrics, the LLM judge (against a local endpoint), and the evaluator end to end."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from perceive import hookimpl
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
                     runtime={"max_new_tokens": 16}, output=tmp_path / "out",
                     judge={"base_url": endpoint, "retries": 0})
    FakeEndpoint.replies = ["score: 1"] * 3 + ["500"]
    result = evaluate(cfg, model=model, policy=ScriptedPolicy(tok, scripts), progress=False)
    s = result["summary"]
    assert s["exact_match"] == 1.0 and s["anls"] == 1.0 and s["crop_iou"] == 1.0
    assert s["action_counts"] == {"region_select": 4} and s["samples_with_a_hop"] == 1.0
    assert s["judge"] == 1.0 and s["judge_failures"] == 1  # three scored, one failed apart
    assert (tmp_path / "out/eval.json").exists() and "| exact match |" in (tmp_path / "out/eval.md").read_text()
    plain = evaluate(EvalConfig(model=tmp_path, data=data / "plain.json", graph="free_choice",
                                runtime={"max_new_tokens": 3}), model=model, progress=False)
    assert plain["summary"]["exact_match"] == 0.0 and plain["summary"]["crop_iou"] is None
    table = markdown([result, plain])
    assert table.count("\n") == 4 and "judge" in table


def test_oracle_spans_force_the_ground_truth_region_then_the_model_answers(tmp_path):
    data = generate(tmp_path / "cards", 3, seed=4, split="eval", margin=0)
    model = tiny_vpt_model(branches=())
    cfg = EvalConfig(model=tmp_path, data=data / "region.json", graph="free_choice", batch_size=2,
                     runtime={"max_new_tokens": 10}, oracle_spans=True,
                     actions={"region_select": {"options": {"margin": 0}}})
    result = evaluate(cfg, model=model, progress=False)
    # every sample crops exactly its ground-truth cells; what follows is the untrained model's own
    assert result["summary"]["crop_iou"] == 1.0 and result["summary"]["action_counts"]["region_select"] >= 3
    assert all(r["actions"][0] == "region_select" for r in result["records"])


@pytest.mark.slow
def test_eval_compare_cli_puts_runs_side_by_side(tmp_path):
    import subprocess
    import sys

    data = generate(tmp_path / "cards", 2, seed=5, split="eval")
    model = tiny_vpt_model(branches=())
    for name in ("one", "two"):
        evaluate(EvalConfig(model=tmp_path, data=data / "plain.json", name=name, runtime={"max_new_tokens": 2},
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
    assert bad.returncode == 1 and "is not an eval run (no such file or folder)" in bad.stdout


# -- evaluations that must not report a score on nothing -----------------------------------------


def cli(*args):
    """``perceive ARGS`` in this process: (exit code, output with whitespace runs collapsed)."""
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, " ".join(res.output.split())


def test_eval_refuses_data_with_no_usable_item(tmp_path):
    from perceive.errors import DataUnusableError

    data = generate(tmp_path / "cards", 3, seed=6, split="eval")
    moved = tmp_path / "elsewhere/region.json"  # the data file moved away from its images
    moved.parent.mkdir()
    moved.write_text((data / "region.json").read_text())
    cfg = EvalConfig(model=tmp_path / "no-model", data=moved)  # refused before any model loads
    with pytest.raises(DataUnusableError, match="no usable item") as exc:
        evaluate(cfg, progress=False)
    assert "moved away from its images" in exc.value.hint and str(moved.parent) in exc.value.hint
    code, out = cli("eval", "--model", tmp_path / "no-model", "--data", moved, "--out", tmp_path / "out")
    assert code == 1 and "Traceback" not in out and "| run |" not in out
    assert out.startswith(f"error: no usable item in {moved}: all 3 skipped missing image file: 3 item(s), e.g. "
                          "item 0: missing file images/000000.png; item 1: missing file images/000001.png; "
                          "item 2: missing file images/000002.png")
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataUnusableError, match="holds no items"):
        evaluate(EvalConfig(model=tmp_path, data=tmp_path / "empty.json"), progress=False)


def test_eval_refuses_a_half_broken_set_and_lists_each_skipped_item_once(tmp_path):
    from perceive.errors import DataUnusableError
    from perceive.model import save_model

    data = generate(tmp_path / "cards", 4, seed=6, split="eval")
    items = json.loads((data / "region.json").read_text())
    items[0]["images"] = [p.replace("000000", "gone") for p in items[0]["images"]]  # the image and its crop
    broken = data / "broken.json"
    broken.write_text(json.dumps(items))
    model = tiny_vpt_model(branches=())
    cfg = EvalConfig(model=tmp_path, data=broken, runtime={"max_new_tokens": 2}, output=tmp_path / "out")
    with pytest.raises(DataUnusableError, match=r"1 of 4 item\(s\) in .* skipped \(25.0%\)") as exc:
        evaluate(cfg, model=model, progress=False)
    assert "more than the 5.0% that max_skipped_fraction allows" in str(exc.value)
    assert "--max-skipped-fraction 0.25" in exc.value.hint
    cfg.max_skipped_fraction = 0.25
    result = evaluate(cfg, model=model, progress=False)
    assert result["skipped_items"] == [{"index": 0, "problems": ["missing file images/gone.png"]}]  # once
    assert result["summary"]["skipped"] == 1 and result["summary"]["samples"] == 3 and result["data_items"] == 4
    assert json.loads((tmp_path / "out/eval.json").read_text())["skipped_items"] == result["skipped_items"]
    assert "| samples | skipped |" in markdown([result]) and "| 3 | 1 |" in markdown([result])

    path = save_model(model, tmp_path / "m")
    code, out = cli("eval", "--model", path, "--data", broken, "--max-new-tokens", "2")
    assert code == 1 and "error: 1 of 4 item(s)" in out
    code, out = cli("eval", "--model", path, "--data", broken, "--max-new-tokens", "2",
                    "--max-skipped-fraction", "0.3")
    assert code == 0, out
    assert (f"warning: 1 of 4 item(s) in {broken} skipped (25.0%): missing image file: 1 item(s), e.g. item 0: "
            "missing file images/gone.png | run |") in out


def test_eval_compare_tells_runs_with_the_same_name_apart(tmp_path):
    from perceive.eval.runner import run_name

    def run(folder, name):
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps({"name": name, "graph": "free_choice",
                                                      "summary": {"exact_match": 0.5, "samples": 2}}))
        return folder

    a, b = run(tmp_path / "runs/stage-a", "model+free_choice"), run(tmp_path / "runs/stage-b", "model+free_choice")
    c = run(tmp_path / "other", "mine")
    x, y = run(tmp_path / "x/eval", "model+free_choice"), run(tmp_path / "y/eval", "model+free_choice")
    code, out = cli("eval", "compare", a, b, c, x / "eval.json", y, c, "--out", tmp_path / "t.md")
    assert code == 0, out
    names = [row.split(" | ")[0].removeprefix("| ") for row in (tmp_path / "t.md").read_text().splitlines()[2:]]
    assert names == ["stage-a", "stage-b", "mine", "x/eval", "y/eval", "mine #2"]
    # a run's default name is its folder, or its model's (with the run above a trained `model`)
    assert run_name(EvalConfig(model="runs/cards/model", data="d.json", output="runs/eval-b")) == "eval-b"
    assert run_name(EvalConfig(model="runs/cards/model", data="d.json")) == "cards/model"
    # a served model without --out (found by a new-user trial: it crashed after every sample had run)
    assert run_name(EvalConfig(data="d.json", remote={"url": "http://127.0.0.1:8815/v1"})) == "127.0.0.1:8815"
    served = EvalConfig(data="d.json", remote={"url": "http://h/v1", "model": "Qwen/Qwen3-VL"})
    assert run_name(served) == "Qwen_Qwen3-VL"


class Hang:
    """A plugin whose calls never return (until the test releases them)."""

    def __init__(self):
        self.release = threading.Event()

    @hookimpl
    def perceive_before_action(self, context):
        self.release.wait(60)


def test_action_timeout_reaches_the_evaluation_loop(tmp_path, monkeypatch):
    import time

    from perceive.dispatch import abandoned_calls
    from perceive.errors import PerceiveError
    from perceive.plugins import load_registry

    data = generate(tmp_path / "cards", 1, seed=3, split="eval")
    items = json.loads((data / "region.json").read_text())
    model = tiny_vpt_model(branches=())
    tok = model.tokenizer
    policy = ScriptedPolicy(tok, {0: span_tokens(tok, items[0]["messages"][1]["content"])})
    hang = Hang()
    cfg = EvalConfig(model=tmp_path, data=data / "region.json", graph="region_then_answer",
                     runtime={"max_new_tokens": 12, "action_timeout_s": 0.3})
    try:
        t0 = time.perf_counter()
        result = evaluate(cfg, model=model, registry=load_registry([("hang", hang)]), policy=policy, progress=False)
        assert time.perf_counter() - t0 < 30
    finally:
        hang.release.set()
    assert result["records"][0]["error"]["type"] == "action_timeout"
    assert "within 0.3 s" in result["records"][0]["error"]["message"]
    deadline = time.time() + 10
    while abandoned_calls() and time.time() < deadline:
        time.sleep(0.05)
    assert abandoned_calls() == {}

    seen = []

    def fake(cfg, **kw):
        seen.append(cfg.runtime.action_timeout_s)
        raise PerceiveError("stop here")

    monkeypatch.setattr("perceive.eval.runner.evaluate", fake)
    for extra, want in (([], 120.0), (["--action-timeout", "2.5"], 2.5)):
        code, _ = cli("eval", "--model", tmp_path, "--data", data / "region.json", *extra)
        assert code == 1 and seen[-1] == want
    (tmp_path / "e.yaml").write_text(f"model: {tmp_path}\ndata: {data / 'region.json'}\n"
                                     "runtime: {action_timeout_s: 7}\n")
    cli("eval", tmp_path / "e.yaml")
    assert seen[-1] == 7.0
    cli("eval", tmp_path / "e.yaml", "--action-timeout", "0.5")
    assert seen[-1] == 0.5
