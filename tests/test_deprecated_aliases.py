"""Moved modules keep their old import paths for one release (CHANGELOG.md): each old name still
imports, warns with a DeprecationWarning that names its new place, and is the very same object."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

#: old module -> {name: the module that now holds it}; every name each old module offered
MOVED = {
    "perceive.protocol": {
        **dict.fromkeys(["Event", "ParseError", "ParseErrorKind", "PerceptionCall"], "perceive.protocols.calls"),
        **dict.fromkeys(["DictCodec", "TokenCodec", "codec_from_tokenizer"], "perceive.protocols.codec"),
        **dict.fromkeys(["StreamParser", "parse_tokens", "split_text"], "perceive.protocols.vpt_stream"),
    },
    "perceive.branches": {
        **dict.fromkeys(["BranchInput", "BranchSpec", "BranchTokens", "PaperLayout", "branch_problems"],
                        "perceive.reencode.branch_spec"),
        **dict.fromkeys(["ModelBranchEncoder", "model_has_branch"], "perceive.reencode.branch_encoder"),
    },
    "perceive.branches.projectors": dict.fromkeys(["ConditionedProjector", "TokenProjector", "condition", "xavier"],
                                                  "perceive.reencode.projectors"),
    "perceive.branches.weights": dict.fromkeys(["library_rename", "read_config_file", "strict_load"],
                                               "perceive.reencode.weights"),
    "perceive.model.branches": dict.fromkeys(["Branch", "branch_spec", "build_encoder"],
                                             "perceive.model.branch_modules"),
    "perceive.graph.render": {
        **dict.fromkeys(["COLORS", "render_trace"], "perceive.graph.draw.trace_picture"),
        **dict.fromkeys(["EDGE_COLOR", "FILLS", "LABEL_COLOR", "render_graph"], "perceive.graph.draw.graph_picture"),
        **dict.fromkeys(["SHAPES", "to_mermaid"], "perceive.graph.draw.mermaid"),
        **dict.fromkeys(["GraphLayout", "graph_edges", "layout_graph", "path_distance", "rect_distance"],
                        "perceive.graph.draw.layout"),
    },
    "perceive.graph.layout": dict.fromkeys(
        ["DrawnEdge", "DrawnNode", "GraphLayout", "Point", "Rect", "graph_edges", "layout_graph", "path_distance",
         "point_segment_distance", "rect_distance"], "perceive.graph.draw.layout"),
    "perceive.settings": dict.fromkeys(
        ["AUTO_PROTOCOL", "DEFAULT_GRAPH", "MANY_SAMPLES_BATCH_SIZE", "MAX_ACTION_TIMEOUT_S", "ActionTimeout",
         "LoopRuntime", "RuntimeConfig", "SamplingConfig", "ServeConfig"], "perceive.config.settings"),
    "perceive.yamlio": dict.fromkeys(
        ["MAX_ALIASES", "MAX_BYTES", "MAX_DEPTH", "MAX_VALUES", "LinedDict", "load_yaml", "loads"],
        "perceive.config.safe_yaml"),
    "perceive.config_files": {
        **dict.fromkeys(["EXTENDS", "MAX_CHAIN", "load_mapping", "merge", "read_mapping", "stamp", "without"],
                        "perceive.config.files"),
        **dict.fromkeys(["Override", "apply_overrides", "parse_sets"], "perceive.config.overrides"),
        **dict.fromkeys(["at", "format_validation_error", "origin_dir", "rebase", "render_problem", "where"],
                        "perceive.config.origins"),
    },
    "perceive.config_check": dict.fromkeys(["CONFIG_KINDS", "check_config_file", "config_kind", "model_fit_problems"],
                                           "perceive.cli.config_check"),
}
CASES = [(old, name, new) for old, names in MOVED.items() for name, new in names.items()]


@pytest.mark.parametrize(("old", "name", "new"), CASES, ids=[f"{o}.{n}" for o, n, _ in CASES])
def test_an_old_name_warns_with_its_new_place_and_is_the_same_object(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning) as caught:
        obj = getattr(module, name)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert old in message and name in message and new in message, message
    assert obj is getattr(importlib.import_module(new), name)
    assert caught[0].filename == __file__  # the warning points at the caller's line, not at the alias


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_star_import_of_an_old_module_gets_every_name_each_with_its_warning(old):
    """Old code that star-imports an alias gets the names (not an empty namespace that fails later
    with a NameError; found by a new-user trial), each warning once."""
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(f"from {old} import *", namespace)
    assert set(MOVED[old]) <= set(namespace)
    warned = [str(w.message).split(" is deprecated")[0] for w in caught]
    assert len(warned) == len(set(warned)) and {f"{old}.{n}" for n in MOVED[old]} <= set(warned)


def test_a_from_import_warns_once_at_the_importing_line():
    # `from package import name` asks the package twice (the import system's hasattr, then the
    # statement): one warning, at this file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from perceive.branches import BranchSpec
        from perceive.protocol import StreamParser
    assert [(w.category, w.filename) for w in caught] == [(DeprecationWarning, __file__)] * 2
    from perceive.protocols import StreamParser as new_parser
    from perceive.reencode import BranchSpec as new_spec

    assert BranchSpec is new_spec and StreamParser is new_parser


def test_an_unknown_name_is_an_attribute_error_without_a_warning():
    import perceive.branches
    import perceive.protocol

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for module in (perceive.protocol, perceive.branches):
            with pytest.raises(AttributeError, match="no_such_name"):
                module.no_such_name  # noqa: B018
            assert not hasattr(module, "_private")


def test_dir_lists_the_moved_names():
    for old, names in MOVED.items():
        assert set(names) <= set(dir(importlib.import_module(old))), old


def test_the_public_api_is_the_new_objects():
    import perceive
    from perceive.protocols import ParseError, PerceptionCall, StreamParser
    from perceive.reencode import (
        BranchInput,
        BranchSpec,
        BranchTokens,
        ModelBranchEncoder,
        PaperLayout,
        ReencodeAction,
    )

    for obj in (ParseError, PerceptionCall, StreamParser, BranchInput, BranchSpec, BranchTokens, ModelBranchEncoder,
                PaperLayout, ReencodeAction):
        assert getattr(perceive, obj.__name__) is obj


def test_perceive_and_its_plugins_use_no_deprecated_name():
    """Every module of perceive imports, and the reference plugins load, with a deprecated name
    turned into an error (a fresh process: this one has imported the aliases already)."""
    aliases = sorted(MOVED)
    code = f"""
import importlib, importlib.util, pkgutil, warnings
warnings.filterwarnings("error", ".* is deprecated: import ", DeprecationWarning)
import perceive
for m in pkgutil.walk_packages(perceive.__path__, "perceive."):
    # perceive.eval.lmms and perceive.mcp.server import only where their extras are installed
    if (m.name == "perceive.eval.lmms" and importlib.util.find_spec("lmms_eval") is None) or (
            m.name == "perceive.mcp.server" and importlib.util.find_spec("mcp") is None):
        continue
    if m.name not in {aliases!r} and not m.name.endswith("__main__") and ".templates" not in m.name:
        importlib.import_module(m.name)
registry = perceive.load_registry()
assert not registry.broken, registry.broken
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_perceive_config_is_a_package_that_still_offers_every_name_it_did():
    """perceive/config.py became the package perceive/config/: no alias, the same names, no warning."""
    names = ["ActionConfig", "EncoderConfig", "ModelConfig", "PerceiveConfig", "ProtocolConfig", "RemoteConfig",
             "RuntimeConfig", "SamplingConfig", "ServeConfig", "ActionTimeout", "AUTO_PROTOCOL", "DEFAULT_GRAPH",
             "MAX_ACTION_TIMEOUT_S", "Override", "action_option_problems", "apply_overrides", "compose",
             "config_files", "encoder_fit_problems", "encoder_width_problem", "format_validation_error",
             "load_config", "load_mapping", "load_yaml", "load_yaml_mapping", "merge", "model_shorthand",
             "path_problem", "rebase", "rebase_paths", "registry_problems", "render_problem", "run_path_problems",
             "validate"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = importlib.import_module("perceive.config")
        missing = [n for n in names if not hasattr(config, n)]
    assert not missing, missing
    assert set(names) <= set(config.__all__)
    from perceive.config.run_config import PerceiveConfig

    assert config.PerceiveConfig is PerceiveConfig
