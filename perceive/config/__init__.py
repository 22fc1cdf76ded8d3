"""Configs: the run config's schema, its settings, and how every config is read and checked.

The run config (:class:`PerceiveConfig`) is the one config of a run: the model, the encoders
and their local weights, each action's options, the graph and its params, the runtime limits,
sampling, the device and the dtype, and ``perceive serve``'s settings. ``perceive ask``,
``perceive graph run``, ``perceive eval`` and ``perceive serve`` read it with ``--config FILE``
(an eval config is a run config plus what to evaluate on:
:class:`perceive.eval.runner.EvalConfig`); in Python, :meth:`perceive.loop.PerceptionLoop.from_config`.

One module per job; every name below is importable from ``perceive.config``:

* :mod:`~perceive.config.run_config`: the schema (:class:`PerceiveConfig` and its sections);
* :mod:`~perceive.config.settings`: the sections the loop and the server read (``runtime``,
  ``sampling``, ``serve``), each field and its default defined once;
* :mod:`~perceive.config.loading`: :func:`load_config`, and the steps every kind of config
  (run, train, eval) shares: :func:`compose`, :func:`validate`, :func:`rebase_paths`;
* :mod:`~perceive.config.files`: a file and its ``extends:`` chain, merged;
* :mod:`~perceive.config.overrides`: ``--set KEY.PATH=VALUE`` and a command's flags over the files;
* :mod:`~perceive.config.origins`: where each value was written (errors name the file and the
  line, or the ``--set``; relative paths resolve against their file);
* :mod:`~perceive.config.checks`: what a run would refuse, found without running (unknown
  plugin names, options that do not fit an action's ``Options``, missing local paths);
* :mod:`~perceive.config.safe_yaml`: the one YAML reader of perceive (safe tags; size, depth
  and alias limits).

``perceive config check``, which checks every kind of config (run, train, eval, graph), is a
command: :mod:`perceive.cli.config_check`.
"""

from perceive.config.checks import (
    action_option_problems,
    encoder_fit_problems,
    encoder_width_problem,
    path_problem,
    registry_problems,
    run_path_problems,
)
from perceive.config.files import load_mapping, merge
from perceive.config.loading import (
    compose,
    config_files,
    load_config,
    load_yaml_mapping,
    model_shorthand,
    rebase_paths,
    validate,
)
from perceive.config.origins import format_validation_error, rebase, render_problem
from perceive.config.overrides import Override, apply_overrides, parse_sets
from perceive.config.run_config import (
    ActionConfig,
    EncoderConfig,
    ModelConfig,
    PerceiveConfig,
    ProtocolConfig,
    RemoteConfig,
)
from perceive.config.safe_yaml import LinedDict, load_yaml
from perceive.config.settings import (
    AUTO_PROTOCOL,
    DEFAULT_GRAPH,
    MANY_SAMPLES_BATCH_SIZE,
    MAX_ACTION_TIMEOUT_S,
    ActionTimeout,
    LoopRuntime,
    McpConfig,
    RuntimeConfig,
    SamplingConfig,
    ServeConfig,
)

__all__ = [
    "AUTO_PROTOCOL",
    "DEFAULT_GRAPH",
    "MANY_SAMPLES_BATCH_SIZE",
    "MAX_ACTION_TIMEOUT_S",
    "ActionConfig",
    "ActionTimeout",
    "EncoderConfig",
    "LinedDict",
    "LoopRuntime",
    "McpConfig",
    "ModelConfig",
    "Override",
    "PerceiveConfig",
    "ProtocolConfig",
    "RemoteConfig",
    "RuntimeConfig",
    "SamplingConfig",
    "ServeConfig",
    "action_option_problems",
    "apply_overrides",
    "compose",
    "config_files",
    "encoder_fit_problems",
    "encoder_width_problem",
    "format_validation_error",
    "load_config",
    "load_mapping",
    "load_yaml",
    "load_yaml_mapping",
    "merge",
    "model_shorthand",
    "parse_sets",
    "path_problem",
    "rebase",
    "rebase_paths",
    "registry_problems",
    "render_problem",
    "run_path_problems",
    "validate",
]
