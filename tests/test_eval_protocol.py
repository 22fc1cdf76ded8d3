"""The protocol in every result, Avg@k with intervals, per-category figures, and compare refusing runs
measured differently."""

import json
import math
import statistics

import pytest

from perceive.data.cards import generate
from perceive.errors import ConfigError
from perceive.eval import EvalConfig, evaluate
from perceive.eval.stats import Z95, bootstrap, by_item, normal
from perceive.testing.tiny import tiny_vpt_model


@pytest.fixture(scope="module")
def model():
    return tiny_vpt_model(branches=())


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """3 card items with a category each (an extra item field, as a benchmark's)."""
    root = tmp_path_factory.mktemp("cards")
    data = generate(root / "cards", 3, seed=11, split="eval")
    items = json.loads((data / "plain.json").read_text())
    for i, item in enumerate(items):
        item["category"] = "small" if i < 2 else "large"
    (data / "cat.json").write_text(json.dumps(items))
    return data / "cat.json"


def run(tmp_path, cards, model, **kw):
    cfg = EvalConfig(model=tmp_path, data=cards, runtime={"max_new_tokens": 3, "max_batch_size": 4}, **kw)
    return evaluate(cfg, model=model, progress=False)


def test_every_result_states_its_protocol_and_the_system_measured(tmp_path, cards, model):
    r = run(tmp_path, cards, model, params={"max_hops": 2})
    p = r["protocol"]
    assert p["benchmark"] == "paper" and p["items"] == 3 and p["shuffle"] is None  # not multiple choice
    assert p["samples"] == 1 and p["decoding"] == {"mode": "greedy"} and p["seeds"] is None
    assert p["max_hops"] == 2 and p["max_new_tokens"] == 3 and p["judge"] is None
    assert p["data_sha256"] and p["intervals"].startswith("normal")
    s = r["system"]
    assert s["tool_protocol"] == "vpt" and s["coordinates"] == "cells of the image's 8x8 grid"
    assert s["graph"] == r["graph"] and len(s["graph_sha256"]) == 64 and s["params"]["max_hops"] == 2


def test_avg_at_k_asks_each_item_k_times_with_its_own_seed(tmp_path, cards, model):
    r = run(tmp_path, cards, model, samples=3, sampling={"do_sample": True, "temperature": 1.5, "seed": 5},
            output=tmp_path / "out")
    recs = r["records"]
    assert [(x["index"], x["sample"]) for x in recs] == [(i, j) for i in range(3) for j in range(3)]
    assert [x["seed"] for x in recs] == [5 + i * 3 + j for i in range(3) for j in range(3)]
    assert r["protocol"]["samples"] == 3 and r["protocol"]["decoding"]["mode"] == "sampled"
    # the figure is the mean over items of each item's mean over its k samples, spread over items
    means = [statistics.fmean(x["anls"] for x in recs if x["index"] == i) for i in range(3)]
    f = r["summary"]["figures"]["anls"]
    assert f["mean"] == pytest.approx(statistics.fmean(means)) and f["n"] == 3
    assert f["se"] == pytest.approx(statistics.stdev(means) / math.sqrt(3))
    assert f["lo"] == pytest.approx(max(0.0, f["mean"] - Z95 * f["se"]))
    assert f["hi"] == pytest.approx(min(1.0, f["mean"] + Z95 * f["se"]))
    # a run cut short resumes by (item, sample): the same records
    lines = (tmp_path / "out/predictions.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "out/predictions.jsonl").write_text("".join(lines[:4]))
    (tmp_path / "out/eval.json").unlink()
    again = evaluate(EvalConfig(model=tmp_path, data=cards, runtime={"max_new_tokens": 3, "max_batch_size": 4},
                                samples=3, sampling={"do_sample": True, "temperature": 1.5, "seed": 5},
                                output=tmp_path / "out"), model=model, progress=False, resume=True)
    assert again["resumed"]["kept"] == 4
    assert [x["prediction"] for x in again["records"]] == [x["prediction"] for x in recs]


def test_k_greedy_samples_are_refused(tmp_path, cards):
    with pytest.raises(ValueError, match="sampling is greedy"):
        EvalConfig(model=tmp_path, data=cards, samples=2)


def test_figures_are_broken_down_by_category(tmp_path, cards, model):
    r = run(tmp_path, cards, model)
    cats = r["summary"]["categories"]
    assert sorted(cats) == ["large", "small"] and cats["small"]["exact_match"]["n"] == 2
    assert cats["large"]["exact_match"]["n"] == 1 and cats["large"]["exact_match"]["se"] is None
    from perceive.eval.report import markdown

    table = markdown([r])
    assert "| run | category | items |" in table and table.count("| small |") == 1


def test_normal_and_bootstrap_intervals():
    e = normal([1.0, 0.0, 1.0, 1.0])
    assert e.mean == 0.75 and e.se == pytest.approx(0.25) and e.lo == pytest.approx(0.75 - Z95 * 0.25)
    assert e.hi == 1.0  # clipped: a score is never above 1
    assert normal([0.0, 0.0, 0.0, 1.0]).lo == 0.0
    assert normal([]).mean is None and normal([1.0]).se is None
    groups = by_item([{"index": i, "x": float(i % 2)} for i in range(40)])

    def figures(records):
        return {"x": statistics.fmean(r["x"] for r in records)}

    a, b = bootstrap(groups, figures), bootstrap(groups, figures)
    assert a == b  # seeded
    assert a["x"].mean == 0.5 and a["x"].lo < 0.5 < a["x"].hi
    assert a["x"].se == pytest.approx(math.sqrt(0.25 / 40), rel=0.2)  # near the analytic standard error


def cli(*args):
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, " ".join(res.output.split())


def test_compare_refuses_runs_measured_differently_unless_allowed(tmp_path, cards, model):
    for name, hops in (("a", 2), ("b", 2), ("c", 1)):
        run(tmp_path, cards, model, params={"max_hops": hops}, output=tmp_path / name, name=name)
    code, out = cli("eval", "compare", tmp_path / "a", tmp_path / "b")
    assert code == 0 and "| run | graph | exact match |" in out and "protocol" not in out.split("| run |")[1]
    code, out = cli("eval", "compare", tmp_path / "a", tmp_path / "c")
    assert code == 1 and "different protocols" in out and "max_hops: 2 vs 1" in out and "| run |" not in out
    assert "--allow-protocol-differences" in out and "Traceback" not in out
    code, out = cli("eval", "compare", tmp_path / "a", tmp_path / "b", tmp_path / "c",
                    "--allow-protocol-differences")
    assert code == 0 and "warning: the runs were measured under different protocols" in out
    assert "| run | graph | protocol |" in out and "| a | free_choice | A |" in out
    assert "| b | free_choice | A |" in out and "| c | free_choice | B |" in out


def test_compare_says_what_a_path_is_instead_of_an_eval_run(tmp_path):
    code, out = cli("eval", "compare", tmp_path)
    assert code == 1 and f"error: {tmp_path} is not an eval run (a folder without eval.json)" in out
    (tmp_path / "half").mkdir()
    (tmp_path / "half/predictions.jsonl").write_text("")
    code, out = cli("eval", "compare", tmp_path / "half")
    assert code == 1 and "has not finished" in out and "--resume" in out
    (tmp_path / "bad.json").write_text("{")
    code, out = cli("eval", "compare", tmp_path / "bad.json")
    assert code == 1 and "not valid JSON" in out
    (tmp_path / "other.json").write_text("[1]")
    code, out = cli("eval", "compare", tmp_path / "other.json")
    assert code == 1 and "is not an eval result: it has no summary" in out


def test_benchmarks_are_listed():
    code, out = cli("eval", "benchmarks")
    assert code == 0 and all(n in out for n in ("vstar", "hrbench", "mme_realworld", "textvqa", "docvqa", "chartqa",
                                                 "paper"))


def test_an_unknown_benchmark_is_a_config_error(tmp_path, cards):
    with pytest.raises(ConfigError, match=r"unknown benchmark 'vstr' \(did you mean 'vstar'\?\): known are"):
        evaluate(EvalConfig(model=tmp_path, data=cards, benchmark="vstr"), progress=False)


def test_data_check_on_a_benchmark_file_says_which_command_reads_it(tmp_path):
    (tmp_path / "b.parquet").write_bytes(b"PAR1\x9c\x00\xff")
    code, out = cli("data", "check", tmp_path / "b.parquet")
    assert code == 1 and "not a JSON text file" in out and "perceive eval --benchmark NAME" in out
    assert "internal error" not in out
