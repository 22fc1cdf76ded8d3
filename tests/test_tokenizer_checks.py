"""The tokenizer and the model folder: characters the tokenizer cannot encode are reported (a
``tokenizer`` trace event, a warning on the CLI, ``perceive.warnings`` in serve responses), and a
model folder whose tokenizer files, perceive.json and chat template do not agree is refused with
the piece named, never loaded to answer wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from perceive.errors import ModelLoadError
from perceive.loop import LoopOptions, PerceptionLoop
from perceive.loop.unencodable import TextRole, describe, message, unknown_characters, unknown_id, warnings
from perceive.model import load_model
from perceive.trace import EventType

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"
CARD = DEFAULT / "examples" / "card_0.png"
QUESTION = "What number is written on the card?"
EMOJI_WARNING = "warning: the model's tokenizer cannot encode '🤔' (U+1F914) in the question"


def tokenizer_events(answer) -> list[dict]:
    return [e for e in answer.trace.events if e["type"] == EventType.TOKENIZER]


# -- finding the characters -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    from perceive.testing.tiny import build_tokenizer

    return build_tokenizer(branches=[])


def test_the_characters_a_char_level_tokenizer_cannot_encode_in_order_of_appearance(tok):
    assert unknown_id(tok) == tok.convert_tokens_to_ids("<unk>")
    assert unknown_characters(tok, "Was ist 中? 🤔 中 é🤔") == ["中", "🤔", "é"]
    assert unknown_characters(tok, "What number is written on the card?") == []
    assert unknown_characters(tok, "") == []


def test_a_byte_level_tokenizer_loses_no_character():
    """Byte-level BPE (Qwen's own tokenizers) has no unknown token: nothing to check."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe)
    assert unknown_id(fast) is None
    assert fast.decode(fast.encode("中🤔")) == "中🤔"  # every character encodes
    assert unknown_characters(fast, "中🤔") == []


def test_the_warning_names_each_character_its_code_point_and_what_to_do():
    assert describe(["🤔", "中"]) == "'🤔' (U+1F914), '中' (U+4E2D)"
    assert describe(["\u00a0"]) == "'NO-BREAK SPACE' (U+00A0)"  # an invisible character by its name
    assert describe([chr(0x4E00 + i) for i in range(10)]).endswith("'万' (U+4E07) (+2 more)")
    text = message(["🤔"], TextRole.QUESTION)
    assert text.startswith("the model's tokenizer cannot encode '🤔' (U+1F914) in the question: ")
    assert "rephrase the question without them" in text
    assert "system prompt" in message(["é"], TextRole.SYSTEM)
    events = [{"type": EventType.TOKENIZER, "message": "a"}, {"type": EventType.PARSE_ERROR, "message": "b"},
              {"type": "tokenizer", "message": "a"}]
    assert warnings(events) == ["a"]  # each once


# -- the loop records them ----------------------------------------------------------------------

def test_a_question_with_unencodable_characters_is_a_tokenizer_event(text_model, text_registry, photo):
    loop = PerceptionLoop(text_model, registry=text_registry, options=LoopOptions(max_new_tokens=2))
    lost, plain = loop.ask_batch([(photo, "Quel numéro? 🤔🤔"), (photo, QUESTION)])
    (event,) = tokenizer_events(lost)
    assert event["characters"] == ["é", "🤔"] and event["where"] == TextRole.QUESTION == "question"
    assert event["message"] == message(["é", "🤔"], TextRole.QUESTION)
    assert tokenizer_events(plain) == []  # the other sample of the batch says nothing
    assert json.loads(lost.trace.to_json())["events"][0]["where"] == "question"


def test_a_system_prompt_with_unencodable_characters_is_a_tokenizer_event(text_model, text_registry, photo):
    loop = PerceptionLoop(text_model, registry=text_registry,
                          options=LoopOptions(max_new_tokens=2, system="Tu es un assistant sérieux ✓"))
    ans = loop.ask(photo, QUESTION)
    assert [(e["where"], e["characters"]) for e in tokenizer_events(ans)] == [("system", ["é", "✓"])]


def test_an_observation_text_with_unencodable_characters_is_a_tokenizer_event(text_model, text_registry, photo):
    from perceive.testing.scripted import ScriptedPolicy, span_tokens

    tokens = span_tokens(text_model.tokenizer, "<|caption_start|><|caption_end|>")
    loop = PerceptionLoop(text_model, registry=text_registry,
                          options=LoopOptions(max_new_tokens=len(tokens) + 4,
                                              action_options={"caption": {"say": "Preis: 460 €"}}),
                          policy=ScriptedPolicy(text_model.tokenizer, {0: tokens}))
    ans = loop.ask(photo, QUESTION)
    assert ans.ok, ans.error
    assert ans.trace.hops[0].text[0]["text"] == "Preis: 460 €"  # the trace keeps the text whole
    assert [(e["where"], e["characters"]) for e in tokenizer_events(ans)] == [("observation", ["€"])]


def test_a_forced_text_in_the_first_turn_is_checked_too(text_model, text_registry, photo):
    from perceive.graph import compile_graph

    g = compile_graph({"name": "caption_first", "budget": 1, "start": "read",
                       "nodes": {"read": {"kind": "action", "action": "caption", "args": {}, "next": "gen"},
                                 "gen": {"kind": "generate", "next": "done"}, "done": {"kind": "answer"}}},
                      registry=text_registry)
    loop = PerceptionLoop(text_model, graph=g, options=LoopOptions(
        max_new_tokens=2, action_options={"caption": {"say": "Straße"}}))
    ans = loop.ask(photo, "Wie heißt die Straße?")
    assert ans.ok, ans.error
    assert [(e["where"], e["characters"]) for e in tokenizer_events(ans)] == [("observation", ["ß"]),
                                                                               ("question", ["ß"])]


def test_a_tokenizer_without_a_chat_template_is_a_model_load_error(tok):
    from perceive.loop import ChatLayout

    bare = tok.__class__(tokenizer_object=tok.backend_tokenizer, unk_token="<unk>")
    with pytest.raises(ModelLoadError, match="the model's tokenizer has no chat template"):
        ChatLayout(bare)


# -- the CLI and perceive serve say so ---------------------------------------------------------

@pytest.mark.slow
def test_ask_and_graph_run_print_the_warning_once_on_stderr():
    from typer.testing import CliRunner

    from perceive.cli import app

    res = CliRunner().invoke(app, ["ask", str(CARD), f"{QUESTION} 🤔", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("warning: ") == 1 and EMOJI_WARNING in " ".join(res.stderr.split())
    assert "tokenizer" not in res.stdout  # not repeated as an event line
    res = CliRunner().invoke(app, ["graph", "run", "--image", str(CARD), "--question", f"{QUESTION} 🤔", "--json",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert EMOJI_WARNING in " ".join(res.stderr.split())
    (event,) = [e for e in json.loads(res.stdout)["trace"]["events"] if e["type"] == "tokenizer"]
    assert event["characters"] == ["🤔"] and event["where"] == "question"
    res = CliRunner().invoke(app, ["ask", str(CARD), QUESTION, "--device", "cpu"])
    assert res.exit_code == 0 and "warning" not in res.stderr, res.output


@pytest.mark.slow
def test_serve_returns_the_warning_in_perceive_warnings_streamed_or_not():
    pytest.importorskip("fastapi")
    import http.client
    from urllib.parse import urlsplit

    from perceive.testing.live import live_server, user_message

    def post(url, body) -> bytes:
        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        try:
            conn.request("POST", u.path + "/chat/completions", body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200
            return r.read()
        finally:
            conn.close()

    with live_server(PerceptionLoop(load_model(DEFAULT)), model_name="default") as url:
        body = {"model": "default", "messages": [user_message(CARD, f"{QUESTION} 🤔")]}
        (warning,) = json.loads(post(url, body))["perceive"]["warnings"]
        assert warning.startswith("the model's tokenizer cannot encode '🤔' (U+1F914) in the question")
        chunks = [json.loads(line[6:]) for line in post(url, {**body, "stream": True}).decode().splitlines()
                  if line.startswith("data: {")]
        assert [c["perceive"]["warnings"] for c in chunks if "warnings" in c.get("perceive", {})] == [[warning]]
        plain = json.loads(post(url, {**body, "messages": [user_message(CARD, QUESTION)]}))
        assert "warnings" not in plain["perceive"]


# -- the model folder, checked as a whole -------------------------------------------------------

@pytest.fixture
def folder(tmp_path) -> Path:
    """A copy of the shipped default model (its examples left out), to break."""
    dst = tmp_path / "model"
    shutil.copytree(DEFAULT, dst, ignore=shutil.ignore_patterns("examples"))
    return dst


def _edit_json(file: Path, edit) -> None:
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def test_a_folder_without_tokenizer_config_is_refused(folder):
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has tokenizer.json but no tokenizer_config.json") as e:
        load_model(folder)
    assert "copy the tokenizer_config.json saved with this model" in e.value.hint


def test_a_folder_without_tokenizer_json_is_refused_naming_it(folder):
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has tokenizer_config.json but no tokenizer.json") as e:
        load_model(folder)
    assert not e.value.message.rstrip().endswith(":")


def test_a_tokenizer_without_the_perception_tokens_is_refused(folder):
    def drop_region(t):
        t["added_tokens"] = [a for a in t["added_tokens"] if a["content"] != "<|region_token_start|>"]

    _edit_json(folder / "tokenizer.json", drop_region)
    with pytest.raises(ModelLoadError, match=r"the tokenizer does not agree with perceive.json: the tokenizer has "
                                             r"no token <\|region_token_start\|> \(region.start_id = 110\)"):
        load_model(folder)


def test_perception_ids_that_disagree_with_the_tokenizer_are_refused(folder):
    def swap(pj):
        pj["region"]["start_id"], pj["region"]["end_id"] = pj["region"]["end_id"], pj["region"]["start_id"]

    _edit_json(folder / "perceive.json", swap)
    with pytest.raises(ModelLoadError, match=r"perceive.json says region.start_id = 111, but the tokenizer has "
                                             r"<\|region_token_start\|> at id 110"):
        load_model(folder)


def test_a_folder_without_a_chat_template_is_refused(folder):
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(ModelLoadError, match=r"has no chat template: no chat_template.jinja") as e:
        load_model(folder)
    assert "chat_template.jinja" in e.value.hint


def test_a_chat_template_that_disagrees_with_the_tokens_is_refused(folder):
    t = folder / "chat_template.jinja"
    t.write_text(t.read_text().replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>"))
    with pytest.raises(ModelLoadError, match=r"the chat template does not agree with the tokenizer and perceive.json: "
                                             r"a user turn with an image renders without <\|vision_start\|>"):
        load_model(folder)


def test_a_chat_template_that_cannot_render_is_refused(folder):
    (folder / "chat_template.jinja").write_text("{{ messages[0]['nope']['deeper'] }}")
    with pytest.raises(ModelLoadError, match=r"the chat template cannot render a user turn with an image"):
        load_model(folder)


def test_the_shipped_models_pass_the_check():
    from perceive.model.tokenizer_checks import check_tokenizer

    for name in ("default", "toolcall"):
        model = load_model(ROOT / "models" / name)
        check_tokenizer(model.tokenizer, model.config, model.specs, ROOT / "models" / name)  # raises if not
        assert model.config.region is not None


def test_an_error_whose_first_line_ends_in_a_colon_keeps_what_follows():
    from perceive.model.checks import first_line

    exc = ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a file, \n(2) a class")
    assert first_line(exc) == "Couldn't instantiate the backend tokenizer from one of: (1) a file, (2) a class"
    assert first_line(ValueError("one\ntwo")) == "one" and first_line(ValueError("")) == "ValueError"


def test_a_tokenizer_token_the_embedding_has_no_row_for_is_refused(folder):
    """Special tokens added to tokenizer.json past the model's vocabulary would index past the
    embedding the first time a text holds one."""
    def add(t):  # added tokens take ids from the tokenizer's length on (139): 60 reach past row 191
        t["added_tokens"] += [{"id": 139 + k, "content": f"<|extra_{k}|>", "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": True} for k in range(60)]

    _edit_json(folder / "tokenizer.json", add)
    with pytest.raises(ModelLoadError, match=r"the tokenizer has token\(s\) the model has no embedding for \(its "
                                             r"vocabulary is 192\): '<\|extra_53\|>' \(id 192\)") as e:
        load_model(folder)
    assert "remove the added token(s)" in e.value.hint
