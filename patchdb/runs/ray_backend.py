"""Ray backend of a run (``--ray auto|ADDRESS``): one long-lived actor per node holds the loaded engine
(the index read once per node, its threads inside), shards are actor calls, the driver writes them.

Actors restart when they die (``max_restarts=-1``) and their pending shards are retried
(``max_task_retries=-1``); affinity to a node is soft, so a lost node's actor restarts elsewhere.
Samples come back to the driver, which writes and checksums each shard, so only the data (dataset
files or the index file) must be at the same path on every node. Ray is optional: imported here only.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import time

import torch

from ..errors import PatchdbError
from .spec import Engine, RunSpec, set_threads

#: Seconds to wait for a Ray address to answer before giving up with one line (env PATCHDB_RAY_TIMEOUT).
CONNECT_TIMEOUT_S = 15.0
#: Shards in flight per actor (one computing, one queued so that it never waits for the driver).
IN_FLIGHT = 2


class ShardActor:
    """Holds one engine; computes the shards it is given (a Ray actor class, wrapped at run time)."""

    def __init__(self, spec: dict, threads: int):
        set_threads(threads)
        self.engine = Engine(RunSpec.from_dict(spec))

    def pid(self) -> int:
        return os.getpid()

    def run(self, i: int, seeds: list[int], shape, num_classes):
        from .folder import worker_name
        from .work import sample_seeds

        start, cpu0 = time.perf_counter(), time.process_time()
        samples, labels = sample_seeds(self.engine, seeds, tuple(shape), num_classes)
        return (i, samples.numpy(), None if labels is None else labels.numpy(), time.perf_counter() - start,
                worker_name(), time.process_time() - cpu0)


def import_ray():
    try:
        import ray
    except ImportError:
        raise PatchdbError('--ray needs Ray, which is not installed; pip install "patchdb[ray]" (or run without --ray)') from None
    return ray


def connect(ray, address: str, timeout: float | None = None) -> bool:
    """Join the cluster at ``address`` ("auto": the one this machine belongs to); True if this call
    connected (and so should disconnect). An address that does not answer within ``timeout``
    seconds gives one line."""
    timeout = timeout or float(os.environ.get("PATCHDB_RAY_TIMEOUT", CONNECT_TIMEOUT_S))
    if address != "auto":
        _probe(address, timeout)
    if ray.is_initialized():  # a caller (a test, a notebook) already joined a cluster: use it
        return False
    result: dict = {}

    def init():
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            result["ok"] = True
        except Exception as err:  # noqa: BLE001 - any failure to join becomes one line below
            result["err"] = err

    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    thread.join(timeout)
    if "ok" in result:
        return True
    if thread.is_alive():  # Ray's abandoned C++ client aborts the interpreter's normal shutdown
        atexit.register(_exit_now)
    why = f"{type(result['err']).__name__}: {str(result['err']).splitlines()[0]}" if "err" in result else f"no answer in {timeout:.0f} s"
    raise PatchdbError(f"cannot join the Ray cluster at '{address}' ({why}); start one with `ray start --head` "
                       "or pass its address as --ray HOST:PORT")


def _exit_now() -> None:
    """Leave with exit code 2 (a refused input) before Ray's own exit handlers run (atexit is last in,
    first out): a ray.init still blocked in its thread otherwise crashes the exit (std::bad_alloc)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)


def _probe(address: str, timeout: float) -> None:
    """A plain TCP connect to HOST:PORT first: Ray's own client may retry for minutes."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise PatchdbError(f"--ray '{address}' is not 'auto' or HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise PatchdbError(f"the Ray cluster at {address} does not answer ({err.__class__.__name__}: {err}) "
                           f"within {timeout:.0f} s; check the address or start it with `ray start --head`") from None


def run_ray(spec: RunSpec, run, todo, res, settings, finished, echo) -> None:
    """Compute the shards ``todo`` on the Ray cluster this process is connected to (:func:`connect`)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .work import save_shard

    actors = []
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        if not nodes:
            raise PatchdbError("the Ray cluster has no live node with a CPU; add a node or check `ray status`")
        remote = ray.remote(ShardActor)
        for node in nodes:
            threads = int(node["Resources"]["CPU"])
            where = NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)
            actors.append(remote.options(num_cpus=1, max_restarts=-1, max_task_retries=-1,
                                         scheduling_strategy=where).remote(spec.to_dict(), threads))
        echo(f"Ray: {len(actors)} actor(s), one per node ({sum(int(n['Resources']['CPU']) for n in nodes)} CPUs)")
        queue = list(todo)
        shards = dict(todo)
        pending: dict = {}

        def feed(actor) -> None:
            if queue:
                i, seeds = queue.pop(0)
                pending[actor.run.remote(i, seeds, list(res.shape), res.num_classes)] = actor

        for actor in actors:
            for _ in range(IN_FLIGHT):
                feed(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                actor = pending.pop(ref)
                try:
                    i, samples, labels, seconds, worker, cpu = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = err.cause if isinstance(getattr(err, "cause", None), PatchdbError) else None
                    raise cause or PatchdbError(f"a Ray worker failed: {str(err).splitlines()[0]}") from None
                lab = None if labels is None else torch.from_numpy(labels.copy())
                save_shard(run.shard_path(i), torch.from_numpy(samples.copy()), shards[i], lab, res.sizes, spec,
                           run.manifest["settings_id"], seconds)
                finished(i, seconds, worker, cpu)
                feed(actor)
    finally:
        for actor in actors:
            ray.kill(actor)
