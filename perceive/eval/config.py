"""An eval config: a run config (model, graph, actions, runtime, sampling) plus what to evaluate it
on (the data and its benchmark format, samples per item, the judge, the output folder), and its
loading with the old spellings moved or refused."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from perceive.config import PerceiveConfig, RuntimeConfig, load_config
from perceive.config.overrides import Override
from perceive.config.settings import MANY_SAMPLES_BATCH_SIZE
from perceive.data.skipped import DEFAULT_MAX_SKIPPED_FRACTION
from perceive.errors import ConfigDeprecationWarning, ConfigError
from perceive.strict import StrictModel


class JudgeSettings(StrictModel):
    base_url: str
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"
    retries: int = 3


class BenchmarkConfig(StrictModel):
    """How the data is read and asked: ``benchmark: vstar`` is short for ``benchmark: {name: vstar}``."""

    #: the data's format: a benchmark reader (``perceive eval benchmarks`` lists them), or ``paper``
    #: (the VPT paper's JSON layout, which ``perceive data cards`` writes)
    name: str = "paper"
    #: show a multiple-choice item's options in a random order, seeded per item, so that a letter
    #: prior cannot score (V* Bench's file lists the right option first in places)
    shuffle: bool = True
    #: the seed of the option order (the same seed shows the same order)
    seed: int = Field(0, ge=0)
    #: the split to read from a folder written by datasets' ``save_to_disk`` that holds several
    split: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    def shuffled(self, benchmark) -> bool:
        """Whether ``benchmark``'s options are shuffled in this run (multiple choice only)."""
        return bool(benchmark.choices and self.shuffle)


class RayConfig(StrictModel):
    """``perceive eval --ray``: the items stream to a pool of Ray actors, each holding one loaded
    loop (:mod:`perceive.eval.distributed`). ``ray: {}`` starts a local cluster."""

    #: the cluster to join (``auto``, ``HOST:6379``; ``ray://HOST:10001`` needs ray[client]; unset:
    #: ``RAY_ADDRESS``, else a local one)
    address: str | None = None
    #: actors in the pool (unset: one per GPU where there are GPUs, else 2)
    actors: int | None = Field(None, ge=1)
    #: each actor's share of the CPUs and of the GPUs (unset GPUs: 1 where the cluster has GPUs, else 0)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float | None = Field(None, ge=0)
    #: items a worker is handed at once (it batches them continuously with runtime.max_batch_size)
    batch_size: int = Field(16, ge=1)


class EvalConfig(PerceiveConfig):
    """A run config (the model, encoders, actions, graph and params, runtime, device, dtype: see
    :class:`perceive.config.PerceiveConfig`) plus what to evaluate it on. ``model: DIR`` is short
    for ``model: {path: DIR}``; the model is required."""

    data: Path
    #: the data's benchmark format, option shuffling and its seed
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    #: samples per item (Avg@k): sample j of item i draws from seed ``sampling.seed + i*k + j``;
    #: more than one needs ``sampling.do_sample`` (greedy samples would all be the same)
    samples: int = Field(1, ge=1)
    name: str | None = None
    #: run on a Ray cluster (``--ray [ADDRESS]``); unset: in this process
    ray: RayConfig | None = None
    max_samples: int | None = None
    #: deprecated spelling of ``runtime.max_batch_size`` (the samples running at once): given, it is
    #: moved there; read, it is that setting. An eval runs :data:`MANY_SAMPLES_BATCH_SIZE` by default
    batch_size: int | None = Field(None, ge=1, exclude=True)
    #: force each item's own first assistant turn (its ground-truth perception span) before the
    #: model continues: separates finding the region from reading it
    oracle_spans: bool = False
    judge: JudgeSettings | None = None
    output: Path | None = None
    #: the share of the data's items that may be skipped (missing images, malformed items) before
    #: the run refuses: a score on what is left would pass for a score on the whole set
    max_skipped_fraction: float = Field(DEFAULT_MAX_SKIPPED_FRACTION, ge=0, le=1)

    def path_fields(self) -> list[tuple]:
        return [*super().path_fields(), ("data",), ("output",)]

    @model_validator(mode="before")
    @classmethod
    def _batch_size_moved(cls, data: Any) -> Any:
        """``EvalConfig(batch_size=N)`` in Python (a file's is moved by :func:`_normalise`)."""
        if not isinstance(data, dict) or data.get("batch_size") is None:
            return data
        warnings.warn(BATCH_SIZE_MOVED, ConfigDeprecationWarning, stacklevel=4)
        runtime = data.get("runtime") or {}
        runtime = runtime.model_dump(exclude_unset=True) if isinstance(runtime, RuntimeConfig) else dict(runtime)
        if runtime.get("max_batch_size", data["batch_size"]) != data["batch_size"]:
            raise ValueError(f"batch_size {data['batch_size']} and runtime.max_batch_size "
                             f"{runtime['max_batch_size']} disagree: set runtime.max_batch_size only")
        return {**{k: v for k, v in data.items() if k != "batch_size"},
                "runtime": {**runtime, "max_batch_size": data["batch_size"]}}

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> EvalConfig:
        if self.samples > 1 and not self.sampling.do_sample:
            raise ValueError(f"samples: {self.samples} asks each item {self.samples} times, but sampling is greedy: "
                             "every sample would be the same; set sampling.do_sample: true (and a temperature), "
                             "or samples: 1")
        return self

    @model_validator(mode="after")
    def _eval_batch(self) -> EvalConfig:
        # an eval runs many samples: a batch of a few by default, not all of them at once
        if self.runtime.max_batch_size is None:
            self.runtime = self.runtime.model_copy(update={"max_batch_size": MANY_SAMPLES_BATCH_SIZE})
        self.batch_size = self.runtime.max_batch_size  # the old spelling reads the one setting
        return self


#: fields an eval config had before it was a run config, and where they are now
MOVED = {"max_new_tokens": "runtime.max_new_tokens", "action_timeout_s": "runtime.action_timeout_s",
         "action_options": "actions.<name>.options"}
#: what a ``batch_size`` written in a file, a ``--set`` or Python is told
BATCH_SIZE_MOVED = "the eval config's batch_size is deprecated: set runtime.max_batch_size (--batch-size sets it)"
#: keyword arguments of :func:`load_eval_config` that name a nested field
FLAG_KEYS = {"model": ("model", "path"), "max_new_tokens": ("runtime", "max_new_tokens"),
             "action_timeout_s": ("runtime", "action_timeout_s")}


def _batch_size_as_setting(data):
    """``batch_size`` moved to ``runtime.max_batch_size``, keeping where it was written. From the
    command line it wins over the file's setting, as every flag; written in a file beside
    ``runtime.max_batch_size``, the two are refused unless they agree."""
    from perceive.config.safe_yaml import LinedDict

    origin, line = data.origins.pop("batch_size", None), data.lines.pop("batch_size", None)
    value = data.pop("batch_size")
    if origin != "--batch-size":
        where = f"{origin or 'the eval config'}" + (f" line {line}" if line else "")
        warnings.warn(f"{where}: {BATCH_SIZE_MOVED}", ConfigDeprecationWarning, stacklevel=2)
    runtime = data.get("runtime")
    if runtime is None:
        runtime = data["runtime"] = LinedDict()
    if not isinstance(runtime, LinedDict):  # not a mapping: validation names the field
        return data
    if runtime.origins.get("max_batch_size") == "--batch-size":
        return data  # the flag sets runtime.max_batch_size, and a flag beats --set batch_size
    command_line = str(origin or "").startswith("--")
    if "max_batch_size" in runtime and not command_line and runtime["max_batch_size"] != value:
        raise ConfigError(f"{origin or 'the eval config'}: batch_size ({value}"
                          + (f", line {line}" if line else "") + f") and runtime.max_batch_size "
                          f"({runtime['max_batch_size']}) disagree", hint="set runtime.max_batch_size only")
    runtime["max_batch_size"] = value
    runtime.lines.pop("max_batch_size", None)
    if line is not None:
        runtime.lines["max_batch_size"] = line
    if origin is not None:
        runtime.origins["max_batch_size"] = origin
    return data


def _normalise(data):
    """``model: DIR`` shorthand; ``batch_size`` as ``runtime.max_batch_size``; the fields that moved
    into the run config's sections refused with where they are now."""
    from perceive.config import model_shorthand

    moved = [k for k in MOVED if k in data]
    if moved:
        lines = [f"  {k}" + (f" (line {data.lines[k]})" if k in data.lines else "") + f": moved to {MOVED[k]}"
                 for k in moved]
        origin = data.origins.get(moved[0])
        raise ConfigError("\n".join([f"{origin or 'the eval config'}: {len(moved)} field(s) of the old eval config",
                                     *lines]),
                          hint="an eval config is a run config now: e.g. `runtime: {max_new_tokens: 16}`; see "
                               "docs/reference/config.md")
    if "batch_size" in data:
        data = _batch_size_as_setting(data)
    return model_shorthand(data)


def load_eval_config(path: str | Path | list | None, *, overrides: list[Override] | tuple = (),
                     **flags) -> EvalConfig:
    """An eval config: ``path`` (several files: each laid over the one before; ``None``: the
    command line alone) with its ``extends`` chain, then ``overrides`` (``--set``, flags), then
    ``flags`` (``model=DIR``, ``device="cpu"``, ...; ``None``: not given). Relative paths resolve
    against the file that wrote them. See :func:`perceive.config.load_config`."""
    flag_overrides = [Override(FLAG_KEYS.get(k, (k,)), v, "--" + k.replace("_", "-"))
                      for k, v in flags.items() if v is not None]
    cfg = load_config(path, overrides=[*overrides, *flag_overrides], schema=EvalConfig, normalise=_normalise)
    if cfg.model.path is None and cfg.remote is None:
        raise ConfigError(f"{cfg._source}: model.path is not set: evaluation loads a local model folder",
                          hint="set `model: DIR` in the config, pass --model DIR, or --remote URL for a served model")
    return cfg
