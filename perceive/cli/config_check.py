"""``perceive config check``: what would fail at run time in a run, train or eval config (or a
graph), found without running.

The schema and options are checked by the loaders themselves (:func:`perceive.config.load_config`,
:func:`perceive.train.config.load_train_config`, :func:`perceive.eval.runner.load_eval_config`);
this module adds what needs the installed plugins or the file system, through the same checks a
run uses (:mod:`perceive.config.checks`). It tells the kinds apart and reads train and eval
configs, so it belongs with its command, above them, not in :mod:`perceive.config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perceive.config import (
    PerceiveConfig,
    action_option_problems,
    encoder_fit_problems,
    load_config,
    load_yaml_mapping,
    path_problem,
    registry_problems,
    render_problem,
    run_path_problems,
)
from perceive.errors import ConfigError, PerceiveError

CONFIG_KINDS = ("run", "train", "eval", "graph")


def config_kind(data: Any) -> tuple[str, str]:
    """Which config a parsed YAML file is (``run``, ``train``, ``eval`` or a ``graph``), and why:
    the kind whose schema knows most of its top-level keys; ``data:`` a mapping means train, a
    path eval."""
    from perceive.eval.runner import EvalConfig
    from perceive.graph.spec import GraphSpec
    from perceive.rl.config import GRPOConfig

    keys = set(data) if isinstance(data, dict) else set()
    if {"nodes", "start"} <= keys:
        return "graph", "top-level keys nodes and start"
    fields = {"run": set(PerceiveConfig.model_fields), "train": set(GRPOConfig.model_fields),
              "eval": set(EvalConfig.model_fields), "graph": set(GraphSpec.model_fields)}
    score = {k: float(len(keys & f)) for k, f in fields.items()}
    if isinstance(data, dict) and "data" in data:
        score["train" if isinstance(data["data"], dict) else "eval"] += 0.5
    score["run"] += 0.25  # ties: a run config, the default kind
    kind = max(score, key=score.get)
    known = sorted(keys & fields[kind])
    why = f"top-level keys {', '.join(known)}" if known else "no top-level keys of another kind"
    return kind, why


def _train_problems(path: Path, registry) -> list[tuple[tuple, str]]:
    from perceive.rl.config import GRPOConfig, load_training_config
    from perceive.rl.rewards import pick_rewards

    cfg = load_training_config(path)  # ConfigError for schema errors; supervised or GRPO by `method:`
    out = []
    if isinstance(cfg, GRPOConfig):
        try:
            pick_rewards(cfg.rewards, registry, "")
        except PerceiveError as exc:
            out.append((("rewards",), exc.message + (f" ({exc.hint})" if exc.hint else "")))
        out += _graph_problems(cfg.rollout.graph, {"max_hops": cfg.rollout.max_hops, **cfg.rollout.params},
                               registry, ("rollout", "graph"))
    for attr in ("train", "eval"):
        out.append((("data", attr), path_problem(getattr(cfg.data, attr),
                                                 "training reads JSONL data from a local file")))
    out.append((("model", "path"), path_problem(cfg.model.path, "a checkpoint to start from is a local model folder",
                                                folder=True, model=True)))
    if cfg.model.path is not None and cfg.model.tiny is not None:
        out.append((("model",), "set `path` (start from a checkpoint) or `tiny` (build a model), not both"))
    out += action_option_problems(cfg.model.action_defaults or {}, registry, ("model", "action_defaults"))
    return out


def _eval_problems(path: Path, registry) -> list[tuple[tuple, str]]:
    from perceive.eval.runner import load_eval_config

    cfg = load_eval_config(path)  # ConfigError for schema errors and options, the device included
    out = [*registry_problems(cfg, registry), *run_path_problems(cfg), *model_fit_problems(cfg, registry),
           (("data",), path_problem(cfg.data, "evaluation reads JSONL data from a local file"))]
    return out + _graph_problems(cfg.graph, cfg.graph_params(), registry, ("graph",))


def _graph_problems(name, params: dict, registry, where: tuple) -> list[tuple[tuple, str]]:
    from perceive.graph import check as check_graph
    from perceive.graph import resolve

    try:
        graph = resolve(name)
    except FileNotFoundError as exc:
        return [(where, str(exc))]
    _, issues = check_graph(graph, registry, params)
    return [(where, "graph " + i.render(str(graph))) for i in issues]


def model_fit_problems(cfg: PerceiveConfig, registry) -> list[tuple[tuple, str]]:
    """:func:`encoder_fit_problems` against the model folder's ``perceive.json``, read without
    loading weights (nothing when there is no such file: the path checks report it)."""
    from perceive.model.checks import CONFIG_FILE, read_vpt_config

    if cfg.model.path is None or not (Path(cfg.model.path) / CONFIG_FILE).is_file():
        return []
    try:
        branches = read_vpt_config(cfg.model.path).branches
    except ConfigError as exc:
        return [(("model", "path"), exc.message)]
    return encoder_fit_problems(cfg, branches, registry)


def check_config_file(path: str | Path, kind: str = "auto", registry=None) -> tuple[str, str, list[str]]:
    """What ``perceive config check`` reports: ``(kind, why that kind, problems)``.

    ``kind``: ``run``, ``train``, ``eval`` or ``auto`` (:func:`config_kind`). Problems are
    everything that would fail at run time and can be seen without running: the schema and
    options (raised as :class:`~perceive.errors.ConfigError`), then unknown names, encoders that
    do not fit their action, local paths that do not exist, and for eval configs the graph."""
    from perceive.plugins import get_registry

    path = Path(path)
    registry = registry or get_registry()
    data = load_yaml_mapping(path)
    if kind == "auto":
        kind, why = config_kind(data)
    elif kind in CONFIG_KINDS:
        why = "--kind"
    else:
        raise ConfigError(f"no config kind {kind!r}", hint=f"use one of {', '.join(CONFIG_KINDS)} or auto")
    try:
        if kind == "run":
            cfg = load_config(path, registry)
            return kind, why, cfg.problems(registry) + [cfg.render(*p) for p in model_fit_problems(cfg, registry)]
        if kind == "graph":  # what `perceive graph validate` reports
            from perceive.graph import check as check_graph

            issues = check_graph(path, registry)[1]
            return kind, why, [(f"line {i.line}:" if i.line else "") + (f" node '{i.node}':" if i.node else "")
                               + f" {i.message} [{i.code}]" for i in issues]
        found = (_train_problems if kind == "train" else _eval_problems)(path, registry)
    except ConfigError as exc:  # the schema or options: say which schema it was checked against
        exc.config_kind, exc.why = kind, why
        raise
    return kind, why, [render_problem(loc, msg, data) for loc, msg in found if msg]


__all__ = ["CONFIG_KINDS", "check_config_file", "config_kind"]
