"""lmms-eval's ``--model_args`` (with its ``--batch_size`` and ``--device``) as a perceive run
config, and a task's ``generation_kwargs`` as the run's sampling.

The keys are those of ``perceive ask``: ``config=run.yaml`` is the run config, and the other keys
override it as that command's flags do (``model=DIR``, ``remote=URL``, ``protocol=NAME``,
``graph=NAME``, ``max_hops=N``, ``dtype=...``); a dotted key is any setting of the run config
(``runtime.action_timeout_s=30``, ``params.rows=3``), as ``--set`` is.
"""

from __future__ import annotations

import json
from typing import Any

from perceive.config import Override, PerceiveConfig, SamplingConfig, load_config
from perceive.config.settings import MANY_SAMPLES_BATCH_SIZE
from perceive.errors import ConfigError, did_you_mean

#: the ``--model_args`` keys besides dotted config paths (``trace_dir`` is the adapter's own)
KEYS = ("config", "model", "remote", "remote_model", "protocol", "graph", "max_hops", "dtype", "trace_dir")


def unquoted(value: Any) -> Any:
    """A value as lmms-eval hands it over, without the quotes that kept its commas together
    (``remote="http://a/v1,http://b/v1"``): lmms-eval splits on commas outside quotes and keeps
    the quotes."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def run_config(*, config=None, model=None, remote=None, remote_model=None, protocol=None, graph=None,
               max_hops=None, dtype=None, device=None, extra: dict[str, Any] | None = None) -> PerceiveConfig:
    """The run config ``--model_args`` describe: the file ``config`` (none: the defaults), with
    each other key given laid over it (a key beats the file, as a flag does). ``extra``: the
    remaining keys; each must be a dotted config path. A model folder or an endpoint is
    required. Raises :class:`~perceive.errors.ConfigError` naming the key at fault."""
    def given(path, value, key):
        return [] if value is None else [Override(path, unquoted(value), f"model_args {key}")]

    overrides = [*given(("model", "path"), model, "model"),
                 *given(("remote", "url"), remote, "remote"),  # "a,b": several endpoints (the schema splits it)
                 *given(("remote", "model"), remote_model, "remote_model"),
                 *given(("protocol",), None if protocol is None else {"name": unquoted(protocol)}, "protocol"),
                 *given(("graph",), graph, "graph"),
                 # the graph's param too, as perceive ask's --max-hops: a config's params.max_hops would beat it
                 *given(("runtime", "max_hops"), max_hops, "max_hops"),
                 *given(("params", "max_hops"), max_hops, "max_hops"),
                 *given(("dtype",), dtype, "dtype"), *given(("device",), device, "--device")]
    for key, value in (extra or {}).items():
        if "." not in key:
            raise ConfigError(f"--model_args: unknown key {key!r} ({did_you_mean(key, KEYS)})",
                              hint=f"the keys are {', '.join(KEYS)}, or a dotted run-config setting such as "
                                   "runtime.max_new_tokens=64; anything else goes in config=run.yaml")
        path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
        overrides += given(path, value, key)
    cfg = load_config(unquoted(config), overrides=overrides)
    if cfg.model.path is None and cfg.remote is None:
        raise ConfigError("--model_args names no model: lmms-eval's perceive model needs a local model folder "
                          "or a served one", hint="pass model=DIR (a perceive or Qwen-VL folder) or remote=URL, "
                          "or config=run.yaml that sets one")
    from perceive.threads import set_torch_threads

    set_torch_threads(cfg.runtime.threads)  # once, before the model runs (docs/performance.md#threads)
    return cfg


def batch_cap(batch_size: Any, max_batch_size: Any, cfg: PerceiveConfig) -> int:
    """lmms-eval's ``--batch_size`` as the samples running at once (locally the running batch,
    remotely the requests in flight): ``N``; ``auto`` (or ``auto:N``): the run config's
    ``runtime.max_batch_size`` (remote: ``remote.concurrency``), else
    :data:`~perceive.config.settings.MANY_SAMPLES_BATCH_SIZE`, at most ``--max_batch_size``."""
    text = str(batch_size if batch_size is not None else "auto").strip()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if text != "auto" and not text.startswith("auto:"):
        raise ConfigError(f"--batch_size {batch_size!r} is not a number of samples",
                          hint="pass --batch_size N (the samples running at once), or auto")
    configured = cfg.remote.concurrency if cfg.remote is not None else cfg.runtime.max_batch_size
    cap = configured or MANY_SAMPLES_BATCH_SIZE
    limit = max_batch_size if max_batch_size is not None else (text[5:] if ":" in text else None)
    if limit is None:
        return cap
    if not str(limit).isdigit() or int(limit) < 1:
        raise ConfigError(f"--batch_size {batch_size!r} / --max_batch_size {max_batch_size!r}: the most samples "
                          "at once is a number", hint="pass --max_batch_size N (N at least 1)")
    return min(cap, int(limit))

def generation_key(gen_kwargs: dict[str, Any] | None) -> str:
    """``gen_kwargs`` as a key: requests asked alike share a loop."""
    return json.dumps(gen_kwargs or {}, sort_keys=True, default=str)


def with_generation(cfg: PerceiveConfig, gen_kwargs: dict[str, Any] | None) -> PerceiveConfig:
    """``cfg`` with a task's ``generation_kwargs`` (after lmms-eval's ``--gen_kwargs``): greedy when
    ``temperature`` is 0 or ``do_sample`` is false, else sampled (``temperature``, ``top_p``,
    ``top_k`` over the run's); ``max_new_tokens`` is ``runtime.max_new_tokens``, the tokens a
    sample may generate in all its turns (perception calls count). ``until`` is applied to the
    answer (:func:`cut_at_stop`); beam search is refused."""
    kw = dict(gen_kwargs or {})
    if int(kw.get("num_beams") or 1) > 1:
        raise ConfigError(f"generation_kwargs num_beams={kw['num_beams']}: perceive's loop decodes greedily or "
                          "samples; it has no beam search", hint="pass --gen_kwargs num_beams=1")
    temperature = kw.get("temperature")
    greedy = kw.get("do_sample") is False or (temperature is not None and float(temperature) == 0)
    sampled = not greedy and (kw.get("do_sample") is True or temperature is not None)
    sampling = cfg.sampling.model_dump()
    if greedy:
        sampling["do_sample"] = False
    elif sampled:
        sampling["do_sample"] = True
        sampling.update({k: kw[k] for k in ("temperature", "top_k", "top_p") if kw.get(k) is not None})
    runtime = cfg.runtime.model_dump()
    if kw.get("max_new_tokens") is not None:
        runtime["max_new_tokens"] = kw["max_new_tokens"]
    try:  # validated: a temperature below 0 or a max_new_tokens of 0 is the task's mistake, said so
        return cfg.model_copy(update={"sampling": SamplingConfig(**sampling),
                                      "runtime": type(cfg.runtime)(**runtime)})
    except ValueError as exc:
        raise ConfigError(f"generation_kwargs {kw}: {exc}", hint="fix the task's generation_kwargs or "
                          "lmms-eval's --gen_kwargs") from None


def cut_at_stop(text: str, gen_kwargs: dict[str, Any] | None) -> str:
    """``text`` up to the first of the task's stop strings (``until``), as a model that stops
    there would have answered."""
    until = (gen_kwargs or {}).get("until") or []
    for stop in [until] if isinstance(until, str) else until:
        if stop:
            text = text.split(stop, 1)[0]
    return text
