"""Every hook in perceive/hookspecs.py has a test here named test_hook_<name>."""

from PIL import Image

from perceive import ActionCall, ActionContext, Frame, View, dispatch, hookimpl
from perceive.protocol import DictCodec, ParseErrorKind
from perceive.regions import RegionArgs
from tests.plugins import good


def call_region(registry, image=None, args=None):
    image = image or Image.new("RGB", (64, 48), "red")
    action = registry.action("region_select")
    args = args or RegionArgs(xs=(0,), ys=(0,))
    return dispatch(registry.pm, action, ActionCall("region_select", args), ActionContext.for_image(image))


def test_hook_perceive_register_actions(registry):
    info = registry.register(good, "good")
    assert info.actions == ["left_half"]
    assert registry.action("left_half").name == "left_half"


def test_hook_perceive_register_encoders(registry):
    registry.register(good, "good")
    spec = registry.encoder("ones")
    assert spec.layout == "tokens" and spec.placeholders == 4
    assert registry.encoders["ones"].plugin == "good"


def test_hook_perceive_register_branches(registry):
    from perceive import BranchSpec, BranchTokens
    from perceive.testing.tiny import build_tokenizer, tiny_vpt_model
    from tests.plugins import sobel

    info = registry.register(sobel, "sobel")
    assert info.ok, info.errors
    assert info.branches == ["sobel"] and registry.branches["sobel"].plugin == "sobel"
    spec = registry.branch("sobel")
    assert spec.tokens.start == "<|sobel_action_start|>" and spec.message_placeholder == "<sobel_image>"
    assert {"dino", "sam", "native", "sobel"} <= set(registry.branch_specs())  # the reference branches too
    # the model builds the branch from the spec alone
    model = tiny_vpt_model(branches=("sobel",), tokenizer=build_tokenizer(registry=registry), registry=registry)
    assert model.branch_spec("sobel") is spec and model.branch_encoder("sobel") is not None

    class Broken(BranchSpec):  # no tokens, no modules
        name = "broken"

    class Clash(BranchSpec):  # the dino branch's start token
        name = "clash"
        tokens = BranchTokens("<|detection_action_start|>", "<|c_a|>", "<|c_e|>", "<|c_p|>")
        encoder = "x"
        build_encoder = build_projector = preprocess = encode = lambda *a: None

    class Plugin:
        def __init__(self, spec):
            self.spec = spec

        @hookimpl
        def perceive_register_branches(self):
            return [self.spec]

    bad = registry.register(Plugin(Broken()), "broken")
    assert not bad.ok and any("tokens must be a perceive.BranchTokens" in e for e in bad.errors)
    assert any("build_encoder() is not implemented" in e for e in bad.errors)
    clash = registry.register(Plugin(Clash()), "clash")
    assert any("uses token <|detection_action_start|> which branch 'dino' already owns" in e for e in clash.errors)
    assert "broken" not in registry.branches and "clash" not in registry.branches


def test_hook_perceive_register_protocols(registry):
    from perceive.protocols import TextToolProtocol, ToolProtocol
    from perceive.protocols.base import BoxProblem, Resolved

    assert {"vpt", "hermes_json", "mini_o3_grounding"} <= set(registry.protocols)  # built in

    class Shout(TextToolProtocol):
        """A made-up family: <look>LABEL</look> shows the whole original image."""

        name = "shout"
        open_tag, close_tag = "<look>", "</look>"

        def parse_body(self, body):
            return "look", {"label": body}

        def resolve(self, tool, arguments, views, actions):
            if not arguments["label"]:
                raise BoxProblem(ParseErrorKind.INVALID_ARGS, "say what to look at")
            return Resolved("region_select", actions["region_select"].args_for_box(views[0].box()), "root", tool,
                            arguments)

    class Plugin:
        @hookimpl
        def perceive_register_protocols(self):
            return [Shout()]

    info = registry.register(Plugin(), "shout")
    assert info.ok, info.errors
    assert info.protocols == ["shout"] and registry.protocols["shout"].plugin == "shout"
    shout = registry.protocol("shout")
    events = shout.reader(registry.select(), DictCodec(dict(enumerate("a<look>cat</look><look></look>"))),
                          lambda: [Frame.root(40, 30)]).feed_many(range(30))
    assert [type(e).__name__ for e in events] == ["PerceptionCall", "ParseError"]
    assert events[0].target == "root" and events[0].args.box == (0, 0, 40, 30)
    assert events[1].kind == ParseErrorKind.INVALID_ARGS

    class Nameless(ToolProtocol):  # no name, no reader
        pass

    class Dup(Plugin):
        @hookimpl
        def perceive_register_protocols(self):
            return [Nameless(), Shout()]

    bad = registry.register(Dup(), "dup")
    assert not bad.ok and "dup" not in registry.protocols
    assert any("reader(actions, codec, views) is not implemented" in e for e in bad.errors)
    assert any("duplicate protocol name 'shout'" in e for e in bad.errors)


def test_hook_perceive_run_action(registry):
    class Cache:
        """A cache plugin: answers before the core implementation, which then never runs."""

        def __init__(self):
            self.stored = None

        @hookimpl(tryfirst=True)
        def perceive_run_action(self, action, call):
            return self.stored

    class Timer:
        """A wrapper sees the result of whichever implementation answered."""

        seen = []

        @hookimpl(wrapper=True)
        def perceive_run_action(self, call):
            result = yield
            self.seen.append((call.action, type(result).__name__))
            return result

    cache, timer = Cache(), Timer()
    registry.register(cache, "cache")
    registry.register(timer, "timer")
    first = call_region(registry)
    assert first.ok and timer.seen == [("region_select", "View")]
    # a stored observation must hold the invariants too: a 1:1 view of the (red) original's pixels
    cache.stored = View(Image.new("RGB", (2, 2), "red"), Frame("cached", 2, 2, parent="root"))
    second = call_region(registry)
    assert second.observation[0].image.size == (2, 2)  # the cached one, not a new crop


def test_hook_perceive_before_action(registry):
    class Veto:
        @hookimpl
        def perceive_before_action(self, call):
            if call.args.xs == (7,):
                raise PermissionError("no peeking at the right edge")

    registry.register(Veto(), "veto")
    assert call_region(registry).ok
    res = call_region(registry, args=RegionArgs(xs=(7,), ys=(0,)))
    assert res.failure.stage == "before" and res.failure.error_type == "PermissionError"
    assert "right edge" in res.failure.message


def test_hook_perceive_after_action(registry):
    class Recorder:
        calls = []

        @hookimpl
        def perceive_after_action(self, action, observation, error, elapsed_ms):
            self.calls.append((action.name, observation is not None, type(error).__name__, elapsed_ms >= 0))
            raise RuntimeError("observers must not break samples")

    rec = Recorder()
    registry.register(rec, "rec")
    assert call_region(registry).ok  # its exception was swallowed
    bad = call_region(registry, image=Image.new("RGB", (64, 48)), args=RegionArgs(box=(500, 500, 600, 600)))
    assert not bad.ok
    assert rec.calls == [("region_select", True, "NoneType", True), ("region_select", False, "ActionInputError", True)]


def _node_log(registry):
    log = []

    class Watch:
        @hookimpl
        def perceive_before_node(self, graph, node, kind, state):
            log.append(("before", graph, node, kind, state["hops"]))

        @hookimpl
        def perceive_after_node(self, node, kind, outcome):
            log.append(("after", node, kind, outcome))
            raise RuntimeError("observers must not break graph runs")

    registry.register(Watch(), "watch")
    return log


def _run_region_graph(registry):
    from perceive.graph import compile_graph
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.testing.images import real_photos
    from perceive.testing.scripted import ScriptedPolicy, span_tokens
    from perceive.testing.tiny import tiny_vpt_model

    model = tiny_vpt_model(branches=())
    tok = model.tokenizer
    span = span_tokens(tok, "<|region_token_start|><|x_1|><|y_1|><|region_token_end|>")
    g = compile_graph("region_then_answer", registry=registry)
    loop = PerceptionLoop(model, registry=registry, graph=g, options=LoopOptions(max_new_tokens=12),
                          policy=ScriptedPolicy(tok, {0: span}))
    return loop.ask_batch([(real_photos()["coffee"], "What?")])[0]


def test_hook_perceive_before_node(registry):
    log = _node_log(registry)
    ans = _run_region_graph(registry)
    assert ans.ok
    before = [e[1:4] for e in log if e[0] == "before"]
    assert before[:4] == [("region_then_answer", "select", "generate"), ("region_then_answer", "called", "route"),
                          ("region_then_answer", "crop", "action"), ("region_then_answer", "answer", "generate")]


def test_hook_perceive_after_node(registry):
    log = _node_log(registry)
    assert _run_region_graph(registry).ok  # the observer's exceptions were swallowed
    after = [e[1:] for e in log if e[0] == "after"]
    assert after[:3] == [("select", "generate", "call region_select"), ("called", "route", "-> crop"),
                         ("crop", "action", "dispatch region_select")]


def test_hook_perceive_register_rewards(registry):
    """The reward plugin of docs/reference/hooks.md and train-with-rewards.md, registered and scoring by name."""
    from types import SimpleNamespace

    from perceive.rewards import Reward
    from perceive.rl.rewards import pick_rewards, rollout_rewards
    from perceive.trace import Hop, Trace

    def looked_once(prompts, completions, trace, **kwargs):
        return [1.0 if len(t.hops) == 1 else 0.0 for t in trace]

    class Plugin:
        @hookimpl
        def perceive_register_rewards(self):
            return [Reward("looked_once", looked_once, "1 for exactly one hop")]

    info = registry.register(Plugin(), "looked")
    assert info.ok and info.rewards == ["looked_once"]
    picked = pick_rewards({"looked_once": 0.5}, registry)
    done = [SimpleNamespace(finished=SimpleNamespace(answer="1", trace=Trace(hops=[Hop(0, "zoom", [], {}, "root")] * n),
                                                     raw="", finish_reason="eos", token_ids=()))
            for n in (1, 2)]
    prompt = SimpleNamespace(question="q", answer="1", box=None)
    total, parts = rollout_rewards(picked, [prompt, prompt], done)
    assert parts["looked_once"] == [1.0, 0.0] and total == [0.5, 0.0]
