"""``perceive eval --ray``: the samples of an eval stream to a pool of Ray actors, each holding one
loaded loop; the driver gathers their records as they come and writes the run, so the result is
the one-process result (same records, same metrics; only the timing figures differ).

The driver (:func:`evaluate_on_ray`) does every check of a one-process run before Ray starts (the
output folder, the resume plan, the data, the graph), then hands Ray Data the positions still to
run. Each actor (:class:`Worker`) rebuilds the run from the config, loads its loop, and answers a
batch of positions at a time with continuous batching inside; it writes nothing and returns each
sample's record (with its trace) as JSON. The driver writes ``predictions.jsonl`` (once per sample,
so ``--resume`` works as for one process) and the results.

A killed actor is restarted by Ray and its unfinished batch retried (:data:`RETRIES` times): the
batch's records reach the driver once, from the attempt that finished, so no sample is lost or
counted twice.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from perceive.errors import ConfigError, ErrorCode, PerceiveError, RemoteError, trace_error
from perceive.eval.config import EvalConfig, RayConfig

#: the column each worker returns: one JSON object a sample, ``{"record", "system", "worker"}``, or
#: ``{"error", "traceback"}`` when the worker cannot answer
OUT = "out"
#: how often a dead actor is restarted, and its unfinished batch retried (Ray Data's default is for ever: a sample
#: that kills its worker each time would loop)
RETRIES = 3
#: where a failed worker's own log is, for the error message
WORKER_LOGS = "/tmp/ray/session_latest/logs on the worker's node"


@dataclass(frozen=True)
class Pool:
    """The actor pool: ``actors`` actors, each reserving ``cpus`` CPUs and ``gpus`` GPUs."""

    actors: int
    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        """torch's intra-op threads in each actor: its whole CPUs (at least 1)."""
        return max(1, math.floor(self.cpus))


def evaluate_on_ray(cfg: EvalConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
                    _kill_at: tuple[int, str] | None = None) -> dict[str, Any]:
    """:func:`perceive.eval.evaluate` on a Ray cluster (``cfg.ray``; unset: a local one): the same
    results, plus ``result["ray"]`` (the cluster's address, the pool, the samples each actor ran).

    The cluster is ``cfg.ray.address`` (``auto``, ``ray://host:10001``), else ``RAY_ADDRESS``, else
    a cluster started on this machine by ``ray start``, else a local one started for this run and
    stopped at its end (a joined cluster is only disconnected from; a Ray session already open in
    this process is used and left open). Every node needs perceive installed, and the config's
    paths (the model, encoder weights, the data and its images) readable at the same path: each
    actor reads them itself. A relative path is resolved against the driver's working folder where
    a node has that folder, else against the worker's own.

    Each actor reserves ``cfg.ray.cpus_per_actor`` CPUs (its torch threads) and
    ``cfg.ray.gpus_per_actor`` GPUs (unset: 1 where the cluster has GPUs and the model is local;
    ``device: auto`` then picks the actor's GPU, and an actor without one runs on the CPU).
    ``_kill_at``: a test hook, see :class:`Worker`.

    Raises, before Ray starts, what :func:`evaluate` raises before any work; then ``ConfigError``
    (Ray is not installed, the cluster cannot be joined, one actor does not fit it), the
    ``PerceiveError`` a worker met loading its loop (re-raised as its type), ``RemoteError`` (Ray
    failed the run: a worker died past its retries), ``RuntimeError`` (a bug in a worker)."""
    from perceive.eval.runner import _bar, prepare

    ray = _import_ray()
    settings = cfg.ray or RayConfig()
    run = prepare(cfg, resume=resume, overwrite=overwrite, load_loop=False)
    todo = [pos for pos, _ in run.todo()]
    try:
        with _session(ray, settings.address):
            pool = plan_pool(settings, ray.cluster_resources(), remote=cfg.remote is not None)
            worker = {"config": cfg.model_dump(mode="json"), "cwd": os.getcwd(), "threads": pool.threads,
                      "kill_at": _kill_at}
            # fewer samples than the batches would take: smaller batches, so that every actor gets some
            batch = max(1, min(settings.batch_size, math.ceil(len(todo) / pool.actors)))
            t_start = time.perf_counter()
            done: dict[str, int] = {}
            with _bar(progress, len(run.keys), len(run.lines)) as update:
                for out in _stream(ray, todo, pool, batch, worker):
                    run.system = run.system or out["system"]
                    done[out["worker"]] = done.get(out["worker"], 0) + 1
                    run.add(out["record"], time.perf_counter() - t_start)
                    update(len(run.lines))
            if run.system is None:  # nothing was left to run: one worker says what is measured
                run.system = _system(ray, pool, worker)
            wall = time.perf_counter() - t_start
            run.ray = {"address": _address(ray), "actors": pool.actors, "cpus_per_actor": pool.cpus,
                       "gpus_per_actor": pool.gpus, "batch_size": batch, "samples_per_actor": done}
    finally:
        run.close()
    return run.finish(wall)


def plan_pool(settings: RayConfig, resources: dict[str, float], *, remote: bool = False) -> Pool:
    """The pool ``settings`` asks for on a cluster with ``resources`` (``ray.cluster_resources()``:
    ``CPU``, ``GPU`` totals). GPUs per actor, unset: 1 where the cluster has GPUs (0 for a remote
    model, which computes nothing here); actors, unset: one per GPU share, else 2. One actor that
    does not fit the cluster is a ``ConfigError``: Ray would wait for it for ever."""
    cpus_total, gpus_total = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    gpus = settings.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if gpus_total >= 1 and not remote else 0.0
    actors = settings.actors or (max(1, int(gpus_total // gpus)) if gpus else 2)
    if settings.cpus_per_actor > cpus_total or gpus > gpus_total:
        raise ConfigError(f"one Ray actor asks for {settings.cpus_per_actor:g} CPU(s) and {gpus:g} GPU(s), and the "
                          f"cluster has {cpus_total:g} CPU(s) and {gpus_total:g} GPU(s): it would never start",
                          hint="lower ray.cpus_per_actor / ray.gpus_per_actor (--set ray.gpus_per_actor=0 runs on "
                               "CPUs), or join a larger cluster")
    return Pool(actors, settings.cpus_per_actor, gpus)


class Worker:
    """One actor of the pool (Ray Data calls it with batches of ``{"pos": [...]}``): the run rebuilt
    from ``config`` (an :class:`EvalConfig`'s JSON dump, without its output folder: the driver
    writes) with its own loaded loop, ``threads`` torch threads, in the folder ``cwd`` where this
    node has it. Per batch it runs :func:`perceive.eval.stream.answers` over the positions
    (continuous batching, ``runtime.max_batch_size`` at once) and returns one JSON string per
    sample in column :data:`OUT`. A sample's failure is in its record; an exception while loading
    (a ``PerceiveError``: a model folder this node lacks, ...; or a bug) or while answering (a bug)
    is returned as the batch's ``error`` for the driver to raise: Ray would retry it, or keep only
    its text. It writes nothing, so a retried batch repeats no side effect.

    ``kill_at``: ``(position, marker)``, a test hook: the first time a batch holds ``position`` and
    the file ``marker`` does not exist, the actor creates it and exits at once, as a crash would."""

    def __init__(self, config: dict[str, Any], cwd: str, threads: int,
                 kill_at: tuple[int, str] | None = None):
        self.kill_at, self.error, self.run = kill_at, None, None
        try:
            self._load(config, cwd, threads)
        except Exception as exc:  # noqa: BLE001 - the driver raises it: the user's (a PerceiveError) or a bug
            self.error = {"error": trace_error(exc), "traceback": traceback.format_exc()}

    def _load(self, config: dict[str, Any], cwd: str, threads: int) -> None:
        import ray

        from perceive.eval.protocol import system_of
        from perceive.eval.runner import prepare
        from perceive.threads import set_torch_threads

        if os.path.isdir(cwd):
            os.chdir(cwd)
        set_torch_threads(threads)
        cfg = EvalConfig.model_validate({**config, "output": None, "ray": None})
        if cfg.remote is None and cfg.device == "auto" and not ray.get_gpu_ids():
            # Ray leaves a GPU-less actor the node's GPUs visible: ``auto`` must not take one it has not reserved
            cfg = cfg.model_copy(update={"device": "cpu"})
        self.run = prepare(cfg)
        self.system = system_of(cfg, self.run.loop, self.run.graph)
        self.id = ray.get_runtime_context().get_actor_id() or f"pid {os.getpid()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        positions = [int(p) for p in batch["pos"]]
        self._maybe_die(positions)
        try:
            lines = self.answer(positions) if self.error is None else [json.dumps(self.error)] * len(positions)
        except Exception as exc:  # noqa: BLE001 - a bug: the driver fails the run with it and its traceback
            lines = [json.dumps({"error": trace_error(exc), "traceback": traceback.format_exc()})] * len(positions)
        return {OUT: np.array(lines, dtype=object)}

    def answer(self, positions: list[int]) -> list[str]:
        """Each sample's record with its trace, as JSON, in the order they finish."""
        from perceive.eval.runner import record
        from perceive.eval.stream import answers

        run = self.run
        work = [(pos, run.getter(run.by_pos[pos][0])) for pos in positions]
        return [json.dumps({"record": record(run, pos, a, ran), "system": self.system, "worker": self.id},
                           default=str)
                for pos, a, ran in answers(run.loop, work, run.cfg.runtime.max_batch_size, run.oracle)]

    def _maybe_die(self, positions: list[int]) -> None:
        if self.kill_at is None:
            return
        pos, marker = self.kill_at
        if pos in positions and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)


def _stream(ray, todo: list[int], pool: Pool, batch_size: int, worker: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The decoded output of each sample of ``todo``, as the pool finishes it; a worker's error
    raised here (see :func:`_raise`), Ray's own as a ``RemoteError``."""
    if not todo:
        return
    import inspect
    import warnings

    from ray.data import ActorPoolStrategy, Dataset

    bounds = {}
    if "ray_remote_args" in inspect.signature(Dataset.map_batches).parameters:
        # deprecated since Ray 2.60 with no named replacement yet: while it lasts, bound the retries
        bounds = {"max_restarts": RETRIES, "max_task_retries": RETRIES}
    with _quiet_data():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ray.data.from_items([{"pos": p} for p in todo]).map_batches(
                Worker, compute=ActorPoolStrategy(size=pool.actors), batch_size=batch_size, num_cpus=pool.cpus,
                num_gpus=pool.gpus, fn_constructor_kwargs=worker, **bounds)
        try:
            for row in ds.iter_rows():
                out = json.loads(row[OUT])
                if "error" in out:
                    _raise(out)
                yield out
        except ray.exceptions.RayError as exc:
            raise RemoteError(f"the Ray run failed: {_first_line(exc)}",
                              hint=f"a worker's own log is in {WORKER_LOGS}; every node needs perceive installed "
                                   "and the config's paths readable") from exc


def _system(ray, pool: Pool, worker: dict[str, Any]) -> dict[str, Any]:
    """What the run measures, from one worker, when no sample was left to run."""
    @ray.remote(num_cpus=pool.cpus, num_gpus=pool.gpus)
    def system(worker: dict[str, Any]) -> dict[str, Any]:
        w = Worker(**{**worker, "kill_at": None})
        return w.error or {"system": w.system}

    out = ray.get(system.remote(worker))
    if "error" in out:
        _raise(out)
    return out["system"]


def _raise(out: dict[str, Any]) -> None:
    """Raise the error a worker returned: a ``PerceiveError`` as its own type (a type perceive does
    not define: a ``PerceiveError`` with its code), anything else as the bug it is."""
    import perceive.errors

    err = out["error"]
    if err["code"] != ErrorCode.INTERNAL.value:
        cls = getattr(perceive.errors, err["type"], None)
        try:
            if not (isinstance(cls, type) and issubclass(cls, PerceiveError)):
                raise TypeError(err["type"])
            exc = cls(err["message"], hint=err.get("hint"))
        except TypeError:  # a plugin's error type, or one not built from (message, hint)
            exc = PerceiveError(err["message"], hint=err.get("hint"))
            exc.code = ErrorCode(err["code"])
        raise exc
    exc = RuntimeError(f"a Ray worker failed: {err['type']}: {err['message']}")
    if hasattr(exc, "add_note"):  # Python 3.11+: --debug shows where, in the worker
        exc.add_note("in the worker:\n" + out.get("traceback", ""))
    raise exc


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray runs the eval on Ray, which is not installed",
                          hint='pip install "perceive[ray]" (from a clone: pip install -e ".[ray]")') from None
    return ray


@contextmanager
def _session(ray, address: str | None):
    """Connected to the cluster (see :func:`evaluate_on_ray`) until the block ends; a session this
    process had open already is used and left open."""
    import logging

    if ray.is_initialized():
        yield
        return
    _reachable(address or os.environ.get("RAY_ADDRESS"))
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: "
                          f"{_first_line(exc)}",
                          hint="start one with `ray start --head` and give its address (`auto` on one of its "
                               "nodes); a cluster with token authentication (Ray's default) also needs "
                               "RAY_AUTH_MODE=token and its token here (RAY_AUTH_TOKEN, or ~/.ray/auth_token); or give "
                               "--ray no address for a local cluster") from None
    try:
        yield
    finally:
        ray.shutdown()  # a local cluster started here stops; a joined one is only disconnected from


def _reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A ``HOST:PORT`` address that nothing answers at is a ``ConfigError`` at once (Ray would retry
    it for minutes); other forms (``auto``, ``ray://``) are Ray's to resolve."""
    import socket

    host, sep, port = (address or "").rpartition(":")
    if not sep or not host or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address}: nothing answers there ({exc})",
                          hint="check the head node's address and port (`ray start --head` prints it; 6379 by "
                               "default), or give --ray no address for a local cluster") from None


@contextmanager
def _quiet_data():
    """Ray Data without its own progress bars and start-up lines (the eval has its bar)."""
    import logging

    from ray.data import DataContext

    ctx, logger = DataContext.get_current(), logging.getLogger("ray.data")
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start, logger.level
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved[:2]
        logger.setLevel(saved[2])


def _address(ray) -> str:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - only a label in the result
        return "local"


def _first_line(exc: BaseException) -> str:
    lines = [x for x in str(exc).splitlines() if x.strip()]
    return lines[0] if lines else type(exc).__name__
