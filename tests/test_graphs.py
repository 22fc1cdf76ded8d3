"""Perception graphs: validation (every error at once, with lines), execution on a tiny model,
budgets, provenance, cache reuse, the builder, rendering and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from perceive import hookimpl
from perceive.graph import GraphBuilder, GraphValidationError, check, compile_graph
from perceive.graph.compiled import GRAPHS_DIR
from perceive.graph.render import render_graph, render_trace
from perceive.graph.trace_graph import from_json, provenance, to_json, trace_to_graph
from perceive.loop import LoopOptions, PerceptionLoop
from perceive.plugins import load_registry
from perceive.testing.images import real_photos
from perceive.testing.scripted import ScriptedPolicy, span_tokens
from perceive.testing.tiny import tiny_vpt_model

HERE = Path(__file__).parent / "graphs"
ROOT = Path(__file__).resolve().parents[1]
R1 = "<|region_token_start|><|x_2|><|y_0|><|x_3|><|y_1|><|region_token_end|>"
R2 = "<|region_token_start|><|x_0|><|y_7|><|region_token_end|>"
DINO = "<|detection_action_start|>"
SHIPPED = sorted(p.stem for p in GRAPHS_DIR.glob("*.yaml"))
SCRIPTS = {"free_choice": R1 + DINO, "region_then_answer": R1, "reencode_then_answer": DINO,
           "iterative_zoom": R1 + R2, "tiles_then_answer": "", "region_then_ocr": R1 + "<|im_end|>"}


def run(model, graph, scripts, items, **opts):
    opts.setdefault("max_new_tokens", 40)
    tok = model.tokenizer
    policy = ScriptedPolicy(tok, {i: span_tokens(tok, s) for i, s in scripts.items()})
    return PerceptionLoop(model, graph=graph, options=LoopOptions(**opts), policy=policy).ask_batch(list(items))


def test_shipped_graphs_are_the_documented_six():
    assert SHIPPED == ["free_choice", "iterative_zoom", "reencode_then_answer", "region_then_answer",
                       "region_then_ocr", "tiles_then_answer"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_graph_validates_and_runs(model, photo, name):
    if name == "region_then_ocr":
        pytest.importorskip("rapidocr_onnxruntime", reason='the ocr action needs pip install "perceive[ocr]"')
    spec, issues = check(name)
    assert issues == [], [i.render() for i in issues]
    g = compile_graph(name)
    ans = run(model, g, {0: SCRIPTS[name]}, [(photo, "What is on the helmet?")])[0]
    assert ans.ok, ans.error
    expected = {"free_choice": ["region_select", "dino"], "region_then_answer": ["region_select"],
                "reencode_then_answer": ["dino"], "iterative_zoom": ["region_select", "region_select"],
                "tiles_then_answer": ["tiles"], "region_then_ocr": ["region_select", "ocr"]}[name]
    assert [h.action for h in ans.trace.hops] == expected
    assert all(h.node in g.spec.nodes for h in ans.trace.hops)


def test_prompt_suffix_is_the_papers_trigger(model, photo):
    g = compile_graph("region_then_answer")
    loop = PerceptionLoop(model, graph=g, options=LoopOptions(max_new_tokens=2))
    seen = []
    real = loop.layout.prompt
    loop.layout.prompt = lambda q, *a: seen.append(q) or real(q, *a)
    loop.ask(photo, "Where is the flag?")
    assert seen == ["Where is the flag? \nIdentify the region that can help you answer the question, and then "
                    "answer the question."]


def issues_of(path, **kw):
    spec, issues = check(path, **kw)
    return {(i.code, i.node): i for i in issues}


def test_every_error_at_once_with_lines():
    got = issues_of(HERE / "everything_wrong.yaml")
    assert got[("unknown-action", "crop")].message.endswith("(did you mean 'region_select'?)")
    assert got[("unknown-action", "crop")].line == 9
    assert "did you mean 'dinov2_large'" in got[("unknown-encoder", "reenc")].message
    assert got[("unknown-encoder", "reenc")].line == 14
    assert got[("unreachable", "lonely")].line == 16
    assert ("unreachable", "stuck") in got and ("unreachable", "done") in got
    assert ("no-path-to-answer", "ask") in got  # ask -> crop -> reenc -> ask never ends
    assert ("cycle-without-budget", got[next(k for k in got if k[0] == "cycle-without-budget")].node) in got
    assert got[("missing-input", "crop")].line == 9  # runs the model's call, but nothing routes it
    assert len(got) >= 9


def test_schema_errors_are_all_reported():
    spec, issues = check(HERE / "bad_schema.yaml")
    assert spec is None
    text = "\n".join(i.render() for i in issues)
    assert "nodes.a" in text and "belong to action nodes" in text
    assert "nodes.b.kind" in text and "teleport" not in text or "Input should be" in text
    assert "nodes.c" in text and "a route needs `switch: call`" in text
    assert {i.line for i in issues} >= {4, 9, 10}  # the offending field's line


def test_route_on_call_needs_a_generate_before_it():
    got = issues_of(HERE / "route_before_generate.yaml")
    assert ("missing-input", "which") in got and "no generate node runs before it" in got[("missing-input",
                                                                                            "which")].message


def test_bad_predicate_and_forced_args():
    got = issues_of(HERE / "bad_predicate.yaml")
    assert ("bad-predicate", "more") in got and ("bad-args", "tiles") in got
    assert ("unreachable", "tiles") in got


@pytest.mark.slow
def test_validate_cli_exits_nonzero_and_lists_everything():
    out = subprocess.run([sys.executable, "-m", "perceive", "graph", "validate", str(HERE / "everything_wrong.yaml")],
                         capture_output=True, text=True, timeout=120, env={"COLUMNS": "250", "PATH": ""})
    assert out.returncode == 1
    assert "everything_wrong.yaml:9: node 'crop': no registered action 'region_selct'" in out.stdout
    assert "problem(s)" in out.stdout
    ok = subprocess.run([sys.executable, "-m", "perceive", "graph", "validate", "iterative_zoom"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_compile_raises_with_all_issues():
    with pytest.raises(GraphValidationError) as e:
        compile_graph(HERE / "everything_wrong.yaml")
    assert len(e.value.issues) >= 9


def test_budget_is_enforced(model, photo):
    g = compile_graph("iterative_zoom", params={"max_hops": 2})
    ans = run(model, g, {0: R1 + R2 + R2}, [(photo, "What?")], max_new_tokens=60)[0]
    assert len(ans.trace.hops) == 2
    assert any(e["type"] == "budget_exhausted" for e in ans.trace.events)


def test_two_hop_zoom_provenance(model, photo):
    g = compile_graph("iterative_zoom")
    ans = run(model, g, {0: R1 + R2}, [(photo, "What?")])[0]
    h1, h2 = ans.trace.hops
    assert h2.target == h1.views[0]["id"]
    # R2 picks cells x 0..1, y 6..7 of the 256x192 first crop: (0, 144, 64, 192) there, +(64, 0) here
    assert h2.box == {"x0": 64, "y0": 144, "x1": 128, "y1": 192, "frame": "root"}
    tg = from_json(json.loads(json.dumps(to_json(trace_to_graph(ans.trace)))))
    v2 = h2.views[0]["id"]
    assert provenance(tg, v2) == ["root", h1.views[0]["id"], v2]
    assert tg.nodes[f"view:{v2}"]["box"] == [64, 144, 128, 192]
    assert list(tg.predecessors("hop:1")) == [f"view:{h1.views[0]['id']}", "hop:0"] or set(
        tg.predecessors("hop:1")) == {f"view:{h1.views[0]['id']}", "hop:0"}


def test_shared_work_is_reused(model, photo):
    """Two nodes that need the same tiles: the action runs once, the second hop reuses it."""
    calls = []

    class Count:
        @hookimpl
        def perceive_after_action(self, action):
            calls.append(action.name)

    registry = load_registry([("count", Count())])
    g = (GraphBuilder("tiles_twice", budget=2)
         .add_node("t1", "action", action="tiles", args={"rows": 2, "cols": 2})
         .add_node("t2", "action", action="tiles", args={"rows": 2, "cols": 2})
         .add_node("answer", "generate").add_node("done", "answer")
         .add_edge("t1", "t2").add_edge("t2", "answer").add_edge("answer", "done")).compile(registry)
    ans = run(model, g, {}, [(photo, "What?")], max_new_tokens=3)[0]
    assert [h.cached for h in ans.trace.hops] == [False, True]
    assert calls == ["tiles"]


def test_builder_validates_like_yaml():
    b = GraphBuilder("broken").add_node("gen", "generate").add_node("act", "action", action="region_select")
    b.add_edge("gen", "act").add_edge("act", "nowhere")
    with pytest.raises(GraphValidationError) as e:
        b.compile()
    codes = {i.code for i in e.value.issues}
    assert {"unknown-node", "missing-input", "no-answer"} <= codes
    with pytest.raises(ValueError, match="already present"):
        b.add_node("gen", "generate")
    with pytest.raises(ValueError, match="conditional edges leave route nodes"):
        b.add_conditional_edges("gen", default="act")


def test_builder_graph_runs_like_the_yaml_one(model, photo):
    g = (GraphBuilder("region_then_answer", budget=1,
                      prompt_suffix=" \nIdentify the region that can help you answer the question, and then answer "
                                    "the question.")
         .add_node("select", "generate").add_node("called", "route")
         .add_node("crop", "action", action="region_select").add_node("answer", "generate")
         .add_node("done", "answer")
         .add_edge("select", "called")
         .add_conditional_edges("called", cases={"region_select": "crop"}, default="done")
         .add_edge("crop", "answer").add_edge("answer", "done")).compile()
    a = run(model, g, {0: R1}, [(photo, "Q?")])[0]
    b = run(model, compile_graph("region_then_answer"), {0: R1}, [(photo, "Q?")])[0]
    assert a.token_ids == b.token_ids and a.trace.hops[0].box == b.trace.hops[0].box


def test_batched_paths_equal_one_at_a_time(model, photo):
    g = compile_graph("free_choice")
    photos = real_photos()
    items = [(photo, "A?"), (photos["coffee"], "B?"), (photos["chelsea"], "C?")]
    scripts = {0: R1 + R2, 1: DINO}
    batch = run(model, g, scripts, items)
    for i, item in enumerate(items):
        single = run(model, g, {0: scripts[i]} if i in scripts else {}, [item])[0]
        assert batch[i].token_ids == single.token_ids
        assert [h.action for h in batch[i].trace.hops] == [h.action for h in single.trace.hops]


def test_route_on_predicate(model, photo):
    g = (GraphBuilder("predicate", budget=3)
         .add_node("tiles", "action", action="tiles", args={"rows": 1, "cols": 2})
         .add_node("more", "route")
         .add_node("gen", "generate").add_node("done", "answer")
         .add_edge("tiles", "more")
         .add_conditional_edges("more", when=[("hops < 2", "tiles")], default="gen")
         .add_edge("gen", "done")).compile()
    ans = run(model, g, {}, [(photo, "Q?")], max_new_tokens=3)[0]
    assert [h.action for h in ans.trace.hops] == ["tiles", "tiles"]
    assert ans.trace.hops[1].cached  # the same tiles: reused, not recomputed


def test_render_trace_and_graph(model, photo, tmp_path):
    ans = run(model, compile_graph("iterative_zoom"), {0: R1 + R2}, [(photo, "What?")])[0]
    pic = render_trace(photo, ans.trace, tmp_path / "trace.png")
    assert (tmp_path / "trace.png").exists() and pic.width > 480
    # hop 1's box outline (first colour) is drawn over the image at its scaled position
    assert pic.getpixel((8 + int(64 * 480 / 512) + 1, 8 + 30)) == (230, 25, 75)
    img = render_graph(compile_graph("free_choice").spec, tmp_path / "g.png")
    assert img.size[0] > 200 and (tmp_path / "g.png").exists()
    text = compile_graph("free_choice").to_mermaid()
    assert text.startswith("flowchart TD") and "called -->|call any| perceive" in text


@pytest.mark.slow
def test_graph_run_cli(tmp_path):
    from perceive.model import save_model

    path = save_model(tiny_vpt_model(), tmp_path / "m")
    img = tmp_path / "a.png"
    real_photos()["coffee"].save(img)
    out = subprocess.run([sys.executable, "-m", "perceive", "graph", "run", "tiles_then_answer", "--image", str(img),
                          "--question", "What?", "--model", str(path), "--json", "--render", str(tmp_path / "t.png"),
                          "--max-new-tokens", "4", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["graph"] == "tiles_then_answer" and len(data["trace"]["hops"]) == 1
    assert len(data["trace"]["hops"][0]["views"]) == 4
    assert {n["id"] for n in data["trace_graph"]["nodes"]} >= {"view:root", "hop:0"}
    assert Image.open(tmp_path / "t.png").size[0] > 0


def test_a_forced_reencode_after_the_model_has_spoken_is_refused(registry):
    data = {"name": "late", "start": "ask", "budget": 2,
            "nodes": {"ask": {"kind": "generate", "next": "dino"},
                      "dino": {"kind": "action", "action": "dino", "args": {}, "next": "done"},
                      "done": {"kind": "answer"}}}
    spec, issues = check(data, registry)
    assert [i.code for i in issues] == ["late-reencode"] and issues[0].node == "dino"
    early = {**data, "start": "dino", "nodes": {**data["nodes"], "dino": {**data["nodes"]["dino"], "next": "ask"},
                                               "ask": {"kind": "generate", "next": "done"}}}
    assert check(early, registry)[1] == []


def test_every_validation_code_is_documented():
    import re

    codes = set(re.findall(r'(?:GraphIssue|add)\("([a-z-]+)"', (ROOT / "perceive/graph/validate.py").read_text()))
    codes |= set(re.findall(r'GraphIssue\("([a-z-]+)"', (ROOT / "perceive/graph/compiled.py").read_text()))
    doc = (ROOT / "docs/reference/graph-schema.md").read_text()
    assert codes and {c for c in codes if f"`{c}`" not in doc} == set()
