"""``perceive eval --ray`` (:mod:`perceive.eval.distributed`): on a local Ray cluster of two CPU
actors the run equals the one-process run (same records and traces apart from timings, same
figures), a worker killed mid-run loses and doubles nothing, a partial run resumes on Ray, and a
worker's error reaches the driver as its own type. The cluster tests are skipped without ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from perceive.data.cards import generate
from perceive.errors import ConfigError, ModelLoadError, OutputError
from perceive.eval import EvalConfig, evaluate
from perceive.eval.config import RayConfig
from perceive.eval.distributed import Pool, _raise, _reachable, evaluate_on_ray, plan_pool
from perceive.testing.traces import untimed

ROOT = Path(__file__).resolve().parents[1]
N, K = 3, 2  # items, samples per item: 6 positions, 3 batches of 2 over 2 actors
# Ray Data's own DataContext warns of its deprecated fields when it copies itself
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

#: the figures that must not depend on where the samples ran
METRICS = ("samples", "exact_match", "anls", "relaxed_accuracy", "samples_with_a_hop", "hops_per_sample",
           "action_counts", "crop_iou", "errors", "tokens_per_sample", "figures", "skipped")


@pytest.fixture(scope="module")
def cluster():
    """One local cluster of 2 CPUs for the module; the pool starts only once both actors are up,
    so each gets work."""
    ray = pytest.importorskip("ray")
    from ray.data import DataContext

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PERCEIVE_PLUGINS": "perceive"}})  # the suite's hermetic plugins
    ctx = DataContext.get_current()
    saved, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 120
    yield ray
    ctx.wait_for_min_actors_s = saved
    ray.shutdown()


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("cards") / "cards", N, seed=11, split="eval")


def config(cards, out, **kw) -> EvalConfig:
    """The shipped default model, sampled (each sample's seed is its position: the actors must
    seed it as one process does), 2 actors of 1 CPU, 2 positions a batch."""
    fields = {"model": ROOT / "models" / "default", "data": cards / "region.json", "device": "cpu",
              "samples": K, "sampling": {"do_sample": True, "temperature": 1.5, "seed": 3},
              "runtime": {"max_new_tokens": 12, "max_batch_size": 2, "threads": 1}, "output": out,
              "ray": {"actors": 2, "cpus_per_actor": 1, "batch_size": 2}}
    return EvalConfig(**{**fields, **kw})


@pytest.fixture(scope="module")
def one(cards, tmp_path_factory):
    """The one-process run, and its output folder: what every Ray run must equal."""
    out = tmp_path_factory.mktemp("one") / "run"
    return evaluate(config(cards, out), progress=False), out




def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]


def assert_same_run(result, one, out):
    one, one_out = one
    assert untimed(result["records"]) == untimed(one["records"])
    assert {k: result["summary"][k] for k in METRICS} == {k: one["summary"][k] for k in METRICS}
    assert result["protocol"] == one["protocol"] and result["system"] == one["system"]
    assert result["system"]["tool_protocol"] == "vpt"  # told by a worker: the driver loads no model
    written = lines(out)  # each sample once, with its trace, written by the driver
    assert sorted((r["index"], r["sample"]) for r in written) == [(i, j) for i in range(N) for j in range(K)]
    by_key = {(r["index"], r["sample"]): r["trace"] for r in lines(one_out)}
    assert all(untimed(r["trace"]) == untimed(by_key[r["index"], r["sample"]]) for r in written)
    assert json.loads((out / "eval.json").read_text())["ray"] == result["ray"]


def test_the_ray_run_equals_the_one_process_run_and_a_killed_worker_loses_and_doubles_nothing(cluster, cards, one,
                                                                                             tmp_path):
    # one run for both checks (each Ray run starts actors that load torch): the records, figures,
    # protocol and traces equal the one-process run's, though a worker died in the middle
    marker = tmp_path / "killed"
    result = evaluate_on_ray(config(cards, tmp_path / "ray"), progress=False, _kill_at=(3, str(marker)))
    assert marker.exists()  # the actor holding position 3 died; Ray restarted it and retried its batch
    assert_same_run(result, one, tmp_path / "ray")
    assert sum(result["ray"]["samples_per_actor"].values()) == N * K
    assert any(r["hops"] for r in result["records"]) and len({r["seed"] for r in result["records"]}) == N * K
    assert result["ray"]["actors"] == 2 and result["ray"]["gpus_per_actor"] == 0


def test_a_partial_run_resumes_on_ray(cluster, cards, one, tmp_path):
    out = tmp_path / "run"  # a one-process run that died after 2 samples, finished on Ray
    shutil.copytree(one[1], out)
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines(out)[:2]))
    for name in ("eval.json", "eval.md"):
        (out / name).unlink()
    result = evaluate_on_ray(config(cards, out, ray={"actors": 1, "batch_size": 2}), progress=False, resume=True)
    assert result["resumed"] == {"kept": 2, "dropped_lines": 0} and result["summary"]["sessions"] == 2
    assert_same_run(result, one, out)
    assert sum(result["ray"]["samples_per_actor"].values()) == N * K - 2  # only what was left ran
    # resumed again, nothing is left to run: one worker task still tells what the run measured
    again = evaluate_on_ray(config(cards, out, ray={"actors": 1}), progress=False, resume=True)
    assert again["ray"]["samples_per_actor"] == {} and again["system"] == one[0]["system"]
    assert untimed(again["records"]) == untimed(one[0]["records"])


def test_a_workers_error_reaches_the_driver_as_its_type(cluster, cards, tmp_path):
    with pytest.raises(ModelLoadError, match=r"model folder not found: .*nowhere") as exc:
        evaluate_on_ray(config(cards, None, model=tmp_path / "nowhere", ray={"actors": 1}), progress=False)
    assert exc.value.hint
    # the driver's own checks come before Ray: an output folder under a file
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        evaluate_on_ray(config(cards, tmp_path / "afile" / "out"), progress=False)


def test_the_pool_fits_the_cluster():
    assert plan_pool(RayConfig(), {"CPU": 16}) == Pool(2, 1.0, 0.0)
    assert plan_pool(RayConfig(), {"CPU": 32, "GPU": 4}) == Pool(4, 1.0, 1.0)  # one actor a GPU
    assert plan_pool(RayConfig(gpus_per_actor=0.5), {"CPU": 32, "GPU": 4}).actors == 8
    assert plan_pool(RayConfig(), {"CPU": 32, "GPU": 4}, remote=True) == Pool(2, 1.0, 0.0)  # a served model
    assert plan_pool(RayConfig(actors=3, cpus_per_actor=2.5), {"CPU": 8}).threads == 2
    with pytest.raises(ConfigError, match=r"asks for 1 CPU\(s\) and 1 GPU\(s\).*has 8 CPU\(s\) and 0 GPU") as exc:
        plan_pool(RayConfig(gpus_per_actor=1), {"CPU": 8})
    assert "ray.gpus_per_actor=0" in exc.value.hint


def test_a_returned_error_is_raised_as_what_it_was():
    with pytest.raises(ModelLoadError, match="gone") as exc:
        _raise({"error": {"code": "model-load", "type": "ModelLoadError", "message": "gone", "hint": "look"}})
    assert exc.value.hint == "look"
    with pytest.raises(Exception, match="odd") as exc:  # a plugin's own error type keeps its code
        _raise({"error": {"code": "action-input", "type": "PluginOwnError", "message": "odd"}})
    assert exc.value.code.value == "action-input"
    with pytest.raises(RuntimeError, match="a Ray worker failed: KeyError: 'x'"):
        _raise({"error": {"code": "internal", "type": "KeyError", "message": "'x'"}, "traceback": "..."})


def test_an_address_nothing_answers_at_is_refused_at_once():
    import socket

    with socket.socket() as s:  # a port of this machine that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot join the Ray cluster at 127.0.0.1:{port}: nothing answers") as exc:
        _reachable(f"127.0.0.1:{port}")
    assert "ray start --head" in exc.value.hint
    for address in ("auto", None, "ray://head:10001"):  # Ray's to resolve
        _reachable(address)
