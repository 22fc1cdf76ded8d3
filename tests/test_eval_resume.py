"""``perceive eval`` never loses work and reports honest figures: every output path is checked
before any work, each finished sample is a line of predictions.jsonl at once, an interrupted run
resumes to the results of an uninterrupted one, latency and throughput are separate figures, and
crop IoU is ``-`` (null) where no region hop was made."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from perceive.data.cards import generate
from perceive.errors import OutputError, ResumeError
from perceive.eval import EvalConfig, evaluate
from perceive.eval.report import markdown, summarize
from perceive.eval.run_folder import read_predictions
from perceive.testing.scripted import ScriptedPolicy, span_tokens
from perceive.testing.tiny import tiny_vpt_model

N = 6
#: the figures that must not depend on whether the run was interrupted
METRICS = ("samples", "exact_match", "anls", "relaxed_accuracy", "samples_with_a_hop", "action_counts", "crop_iou",
           "errors", "tokens_per_sample", "unknown_characters", "skipped")


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("cards") / "cards", N, seed=11, split="eval")


@pytest.fixture(scope="module")
def model():
    return tiny_vpt_model(branches=())


def cli(*args):
    """``perceive ARGS`` in this process: (exit code, output with whitespace runs collapsed)."""
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, " ".join(res.output.split())


class Stop(ScriptedPolicy):
    """Scripted spans for some samples (the model chooses the rest), and a Ctrl-C (a real
    KeyboardInterrupt out of the running batch) when sample ``stop_at`` first decodes."""

    def __init__(self, tokenizer, scripts, stop_at=None):
        super().__init__(tokenizer, scripts)
        self.stop_at = stop_at

    def __call__(self, index, generated, logits):
        if index == self.stop_at and not generated:
            raise KeyboardInterrupt
        return super().__call__(index, generated, logits)


def policy(model, cards, stop_at=None):
    """Even samples emit their ground-truth region span first (a region hop, scored for crop IoU),
    odd ones are the untrained model's own."""
    items = json.loads((cards / "region.json").read_text())
    tok = model.tokenizer
    return Stop(tok, {i: span_tokens(tok, items[i]["messages"][1]["content"]) for i in range(0, N, 2)}, stop_at)


def config(cards, out, **kw) -> EvalConfig:
    fields = {"model": cards.parent / "no-model", "data": cards / "region.json", "graph": "free_choice",
              "runtime": {"max_new_tokens": 10}, "output": out, "batch_size": 2}
    return EvalConfig(**{**fields, **kw})


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]


def test_an_interrupted_eval_resumes_to_the_uninterrupted_results(tmp_path, cards, model):
    full = evaluate(config(cards, tmp_path / "full"), model=model, policy=policy(model, cards), progress=False)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        evaluate(config(cards, out), model=model, policy=policy(model, cards, stop_at=3), progress=False)
    kept = {r["index"]: r for r in lines(out)}
    assert {0, 1} <= set(kept) <= {0, 1, 2}  # sample 3 (and 2, unless it was quick) were running
    assert not (out / "eval.json").exists()
    assert kept[0]["trace"]["answer"] == kept[0]["prediction"] and kept[0]["trace"]["hops"]  # with its trace
    # killed while writing a line: the cut-short line is dropped and its sample runs again
    with (out / "predictions.jsonl").open("a") as f:
        f.write(json.dumps(lines(tmp_path / "full")[4])[:70])

    resumed = evaluate(config(cards, out, batch_size=3), model=model, policy=policy(model, cards), progress=False,
                       resume=True)
    assert resumed["resumed"] == {"kept": len(kept), "dropped_lines": 1}
    assert {k: resumed["summary"][k] for k in METRICS} == {k: full["summary"][k] for k in METRICS}
    assert resumed["summary"]["sessions"] == 2 and full["summary"]["sessions"] == 1

    def same(rec):
        return {k: v for k, v in rec.items() if k != "latency_ms"}

    assert [same(r) for r in resumed["records"]] == [same(r) for r in full["records"]]
    assert sorted(r["index"] for r in lines(out)) == list(range(N))  # one line each, the cut one replaced
    assert json.loads((out / "eval.json").read_text())["summary"] == resumed["summary"]
    # a finished run resumed again runs nothing and reports the same
    again = evaluate(config(cards, out), model=model, policy=policy(model, cards), progress=False, resume=True)
    assert again["resumed"]["kept"] == N and again["summary"]["exact_match"] == full["summary"]["exact_match"]
    assert again["summary"]["sessions"] == 2  # it ran nothing: no session, no wall time of its own


def test_resume_refuses_what_it_cannot_finish(tmp_path, cards, model):
    items = json.loads((cards / "region.json").read_text())
    data = tmp_path / "data.json"  # its own data file (images by absolute path), to change in place

    def write(items):
        data.write_text(json.dumps([{**it, "images": [str(cards / p) for p in it["images"]]} for it in items]))

    write(items)
    out = tmp_path / "run"
    with pytest.raises(ResumeError, match=r"nothing to resume in .*run \(no such folder\)"):
        evaluate(config(cards, out, data=data), model=model, progress=False, resume=True)
    out.mkdir()
    with pytest.raises(ResumeError, match="no fingerprint.json: no eval started there") as exc:
        evaluate(config(cards, out, data=data), model=model, progress=False, resume=True)
    assert "run without --resume" in exc.value.hint
    with pytest.raises(ResumeError, match="none is given"):
        evaluate(config(cards, None, data=data), model=model, progress=False, resume=True)

    with pytest.raises(KeyboardInterrupt):
        evaluate(config(cards, out, data=data), model=model, policy=policy(model, cards, stop_at=2), progress=False)
    assert len(lines(out)) == 2
    with pytest.raises(ResumeError, match=r"another config or data: runtime.max_new_tokens was 10, now 12\n"):
        evaluate(config(cards, out, data=data, runtime={"max_new_tokens": 12}), model=model, progress=False,
                 resume=True)
    with pytest.raises(ResumeError, match='graph was "free_choice", now "region_then_answer"'):
        evaluate(config(cards, out, data=data, graph="region_then_answer"), model=model, progress=False, resume=True)
    items[0]["messages"][-1]["content"] = "999"
    write(items)
    with pytest.raises(ResumeError, match=r"another config or data: the data file's content changed") as exc:
        evaluate(config(cards, out, data=data), model=model, progress=False, resume=True)
    assert "start again without --resume" in exc.value.hint
    # a fresh run would replace the unfinished one: refused unless asked for
    with pytest.raises(ResumeError, match=r"holds an unfinished eval \(2 sample\(s\) done\)") as exc:
        evaluate(config(cards, out, data=data), model=model, progress=False)
    assert "--resume" in exc.value.hint and "--overwrite" in exc.value.hint
    with pytest.raises(ResumeError, match="give one of them"):
        evaluate(config(cards, out, data=data), model=model, progress=False, resume=True, overwrite=True)
    fresh = evaluate(config(cards, out, data=data, max_samples=3), model=model, progress=False, overwrite=True)
    assert fresh["summary"]["samples"] == 3 and sorted(r["index"] for r in lines(out)) == [0, 1, 2]
    # a finished run is replaced without asking, as before
    again = evaluate(config(cards, out, data=data, max_samples=2), model=model, progress=False)
    assert again["summary"]["samples"] == 2 and len(lines(out)) == 2


def test_every_output_path_is_checked_before_any_work(tmp_path, cards, monkeypatch):
    (tmp_path / "afile").write_text("x")
    no_model = tmp_path / "no-model"  # would fail to load: the output is refused first
    with pytest.raises(OutputError, match=r"cannot create --out .*afile/out: .*afile is a file, not a folder"):
        evaluate(config(cards, tmp_path / "afile" / "out", model=no_model), progress=False)
    with pytest.raises(OutputError, match=r"--out .*afile is a file, not a folder"):
        evaluate(config(cards, tmp_path / "afile", model=no_model), progress=False)
    (tmp_path / "out" / "eval.json").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"cannot write .*out/eval.json: it is a folder"):
        evaluate(config(cards, tmp_path / "out", model=no_model), progress=False)
    # a read-only folder (root ignores chmod: the permission check is what is tested)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real(p, mode))
    (tmp_path / "ro").mkdir()
    with pytest.raises(OutputError, match=r"the output folder .*ro is not writable"):
        evaluate(config(cards, tmp_path / "ro", model=no_model), progress=False)
    with pytest.raises(OutputError, match=r"cannot create --out .*ro/sub/out: the folder .*ro is not writable"):
        evaluate(config(cards, tmp_path / "ro" / "sub" / "out", model=no_model), progress=False)
    assert list((tmp_path / "ro").iterdir()) == []

    code, out = cli("eval", "--model", no_model, "--data", cards / "region.json", "--out", tmp_path / "afile/out")
    assert code == 1 and "Traceback" not in out
    assert out.startswith(f"error: cannot create --out {tmp_path / 'afile/out'}: {tmp_path / 'afile'} is a file")
    code, out = cli("eval", "compare", tmp_path / "nowhere", "--out", tmp_path / "afile/t.md")
    assert code == 1 and "is a file, not a folder" in out and "cannot read the run" not in out  # checked first


def test_latency_is_each_samples_own_time_and_throughput_a_figure_apart(tmp_path, cards, model):
    tok = model.tokenizer
    # both join the batch at once; sample 0 ends at its first token, sample 1 decodes 10
    scripts = {0: ["<|im_end|>"], 1: span_tokens(tok, "1234567890")}
    result = evaluate(config(cards, tmp_path / "t", max_samples=2, graph="free_choice"), model=model,
                      policy=ScriptedPolicy(tok, scripts), progress=False)
    first, second = result["records"]
    assert first["generated_tokens"] == 1 and second["generated_tokens"] == 10
    assert 0 < first["latency_ms"] < second["latency_ms"]  # not the batch's wall time for both
    s = result["summary"]
    assert s["latency_ms_mean"] == pytest.approx((first["latency_ms"] + second["latency_ms"]) / 2)
    assert s["latency_ms_p50"] <= s["latency_ms_p95"] <= second["latency_ms"]
    assert s["throughput_samples_per_s"] == pytest.approx(2 / s["seconds"])
    assert "ms_per_sample_median" not in s
    table = markdown([result])
    assert "| latency mean ms | latency p50 ms | latency p95 ms | samples/s |" in table
    # no region hop was made: crop IoU is not 0 but missing (null in JSON, "-" in the table)
    assert first["crop_iou"] is None and second["crop_iou"] is None and s["crop_iou"] is None
    head, _, row = table.splitlines()
    cells = dict(zip(head.split(" | "), row.split(" | "), strict=True))
    assert cells["hop rate"] == "0.000" and cells["crop IoU"] == "-"
    saved = json.loads((tmp_path / "t/eval.json").read_text())
    assert saved["summary"]["crop_iou"] is None and saved["records"][0]["crop_iou"] is None


def test_samples_with_unknown_characters_are_counted(tmp_path, cards, model):
    items = json.loads((cards / "region.json").read_text())
    items[1]["messages"][0]["content"] = items[1]["messages"][0]["content"].replace("number", "number \u4e2d")
    data = cards / "unknown.json"
    data.write_text(json.dumps(items))
    result = evaluate(config(cards, None, data=data, max_samples=3, runtime={"max_new_tokens": 2}), model=model,
                      progress=False)
    assert [("tokenizer" in r["events"]) for r in result["records"]] == [False, True, False]
    assert result["summary"]["unknown_characters"] == 1
    assert "| unknown chars |" in markdown([result])
    # read by the event's type value: records of any origin count
    recs = [{"actions": [], "hops": 0, "error": None, "events": ev} for ev in (["tokenizer"], [], ["tokenizer"])]
    assert summarize(recs)["unknown_characters"] == 2
    assert summarize(recs[1:2])["unknown_characters"] == 0
    assert "unknown chars" not in markdown([{"name": "r", "graph": "g", "summary": summarize(recs[1:2])}])


def test_cli_ctrl_c_keeps_the_finished_samples_and_prints_the_command_to_finish(tmp_path, cards, model, monkeypatch):
    from perceive.loop import Finished
    from perceive.loop.continuous_batching import Batch
    from perceive.model import save_model

    path = save_model(model, tmp_path / "m")
    # in the order the command declares its options, as the printed command gives them
    args = ["eval", "--model", path, "--data", cards / "region.json", "--out", tmp_path / "out",
            "--max-new-tokens", "4", "--set", "batch_size=2"]
    step, finished = Batch.step, []

    def ctrl_c_after_three(self):
        if len(finished) >= 3:
            raise KeyboardInterrupt
        done = step(self)
        finished.extend(e for e in done if isinstance(e, Finished))
        return done

    monkeypatch.setattr(Batch, "step", ctrl_c_after_three)
    code, out = cli(*args)
    assert code == 130 and "Traceback" not in out
    kept = len(lines(tmp_path / "out"))
    assert kept >= 3 and f"interrupted: {kept} finished sample(s) are kept in {tmp_path / 'out/predictions.jsonl'}" \
        in out
    again = shlex.split(out.split("finish with: ")[1])
    assert again[-1] == "--resume" and again[1:] == [str(a) for a in args] + ["--resume"]
    monkeypatch.setattr(Batch, "step", step)
    code, out = cli(*again[1:])
    assert code == 0, out
    assert f"resumed {tmp_path / 'out'}: {kept} sample(s) were done, {N - kept} ran now" in out
    assert sorted(r["index"] for r in lines(tmp_path / "out")) == list(range(N))
    code, out = cli(*args)  # the finished run is replaced
    assert code == 0 and "resumed" not in out

    def ctrl_c_while_loading(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr("perceive.loop_factory.loop_from_config", ctrl_c_while_loading)
    code, out = cli(*args)
    assert code == 130 and out == f"error: interrupted before any sample ran: nothing was written to {tmp_path / 'out'}"
    assert (tmp_path / "out/eval.json").exists()  # the finished run is still there
    code, out = cli(*args[:5])  # no --out
    assert code == 130 and out == ("error: interrupted: nothing was kept; give --out DIR to keep each sample as it "
                                   "finishes")


KILLED_AFTER_3 = """
import os, signal, sys
from perceive.loop import Finished
from perceive.loop.continuous_batching import Batch
step, finished = Batch.step, []
def kill_after_three(self):
    if len(finished) >= 3:
        os.kill(os.getpid(), signal.SIGKILL)
    done = step(self)
    finished.extend(e for e in done if isinstance(e, Finished))
    return done
Batch.step = kill_after_three
sys.argv = ["perceive", *sys.argv[1:]]
from perceive.cli import main
main()
"""


@pytest.mark.slow
def test_a_killed_eval_process_resumes_to_the_uninterrupted_results(tmp_path, cards, model):
    from perceive.model import save_model

    path = save_model(model, tmp_path / "m")
    args = ["eval", "--model", str(path), "--data", str(cards / "region.json"), "--max-new-tokens", "6",
            "--set", "batch_size=2"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_3, *args, "--out", str(tmp_path / "killed")],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    kept, dropped = read_predictions(tmp_path / "killed/predictions.jsonl")
    assert len(kept) >= 3 and dropped == 0 and not (tmp_path / "killed/eval.json").exists()
    code, out = cli(*args, "--out", tmp_path / "killed", "--resume")
    assert code == 0, out
    code, out = cli(*args, "--out", tmp_path / "whole")
    assert code == 0, out
    resumed, whole = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("killed", "whole"))
    assert {k: resumed["summary"][k] for k in METRICS} == {k: whole["summary"][k] for k in METRICS}
    assert [r["prediction"] for r in resumed["records"]] == [r["prediction"] for r in whole["records"]]
    assert resumed["summary"]["sessions"] == 2
