"""Sweeps on a Ray cluster: one Ray core task per run (docs/DESIGN.md, Scale-out).

The driver plans and claims runs exactly as the serial sweep does (sweep.py), puts each dataset once
into Ray's object store (nodes need neither a copy of the data nor a shared filesystem) and submits
one task per run. A task trains through the one training loop and returns the run's record (JSON)
and weights (a CPU state_dict); the driver writes both atomically into the runs folder as each run
comes back, so a driver stopped mid-sweep keeps every run already returned and a rerun skips them.

Honest timings by reservation: by default a task reserves a whole node's CPUs, so no two timed runs
share a machine. `cpus_per_run` packs several runs per node; their records say so (marked contended,
like any run that shared its CPU).

Placement: a run's device is resolved for the cluster, not the driver ('auto' is cuda when some node
has a GPU); a CUDA run reserves one GPU, a CPU run none. A run no live node can hold (more CPUs or a
GPU than any node has) fails at once, in one line, and is looked for again while the sweep waits
(nodes can leave), never waited on for ever. Nodes with no CPUs (a head started with `--num-cpus 0`,
as Ray advises) run nothing and do not set the reservation.

Code: every task checks that its node runs the driver's code version (git commit, else the package
version) before it trains, and fails in one line if not. The code is not shipped in a Ray
runtime_env: the nodes need the project installed anyway (torch, its data loaders), and a version
check says plainly what a silent upload of a working tree would hide.

Faults: a run that raises fails alone (named, with its reason; the other runs go on and the sweep
ends non-zero); a worker process that dies, or a node that leaves, is retried by Ray up to
`max_retries` times (an exception raised by the training itself is not retried: it would recur).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections import Counter
from pathlib import Path

from ..core.data import load_dataset
from ..system.errors import CheckpointError, MnistBenchError, UsageError
from ..system.settings import seconds_from_env
from .config import RunKey, TrainConfig
from .records import RunRecord, RunStore, weights_state
from .sweep import new_counts, plan_sweep, started_line, store_result, take
from .train import train

RAY_MISSING = "ray is not installed: pip install -e '.[cluster]' (on the driver and on every node)"
DEFAULT_ADDRESS = "local"  # a private Ray instance on this machine, ended with the sweep
DEFAULT_MAX_RETRIES = 2
WAIT_S = 30.0  # how long the driver waits for a result before it checks that every pending run can still be placed


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


def cluster_address(address: str | None) -> str:
    """--address, else $RAY_ADDRESS (Ray's own convention), else a private local instance."""
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT, [IPv6]:PORT or ray://HOST:PORT (Ray Client); a one-line error otherwise."""
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit():
        raise UsageError(f"--address must be local, auto, HOST:PORT, [IPv6]:PORT or ray://HOST:PORT, got {address!r}")
    return host, int(port)


def connect(address: str) -> bool:
    """Join the cluster at `address` ('local', 'auto', HOST:PORT, [IPv6]:PORT or ray://HOST:PORT); True
    when this call started the connection (and so ends it). A process already connected (a test's
    cluster) keeps its connection."""
    if address == "local":
        # A private instance listens on loopback only (Ray reads this when it is imported; it would otherwise
        # bind the machine's network address).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        return False
    if address not in ("local", "auto"):
        _check_reachable(address)
    options = dict(log_to_driver=False, logging_level=logging.WARNING)  # the driver prints one line per run instead
    if address == "local":
        options["include_dashboard"] = False
    _bounded(lambda: ray.init(address=address, **options), address)
    return True


CONNECT_TIMEOUT_ENV = "MNIST_BENCH_RAY_CONNECT_TIMEOUT"


def connect_timeout() -> float:
    return seconds_from_env(CONNECT_TIMEOUT_ENV, 120.0)


def _bounded(init, address: str) -> None:
    """ray.init with a bound: a head that accepts the connection and never answers kept ray.init waiting
    for minutes with no word. It runs in a daemon thread; past the bound the command fails in one line
    (the thread, stuck in Ray's handshake, dies with the process)."""
    import threading

    seconds = connect_timeout()
    outcome: dict = {}

    def run() -> None:
        try:
            init()
            outcome["ok"] = True
        except BaseException as exc:  # noqa: BLE001  carried to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="ray-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise UsageError(
            f"the Ray cluster at {address!r} accepted the connection but did not answer within {seconds:g} s "
            f"(is it a Ray head, and a version that matches this one's? ${CONNECT_TIMEOUT_ENV} sets the bound)"
        )
    exc = outcome.get("error")
    if isinstance(exc, (ConnectionError, RuntimeError, ValueError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot reach a Ray cluster at {address!r}: {first}") from None
    if exc is not None:
        raise exc


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds, in one line, where ray.init would retry an unreachable head for minutes."""
    host, port = parse_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(
            f"cannot reach a Ray cluster at {address!r}: {exc.strerror or exc} (is `ray start --head` running there?)"
        ) from None


def live_nodes() -> list[tuple[int, int]]:
    """(CPUs, GPUs) of every live node of the connected cluster."""
    nodes = [n["Resources"] for n in _ray().nodes() if n.get("Alive")]
    return [(int(r.get("CPU", 0)), int(r.get("GPU", 0))) for r in nodes]


def node_cpus() -> list[int]:
    """The CPUs of every live node of the connected cluster."""
    return [cpus for cpus, _ in live_nodes()]


def reservation(cpus: list[int], cpus_per_run: int | None, log) -> int:
    """CPUs each run reserves: a whole node's by default, or `cpus_per_run` to pack runs. Nodes without
    CPUs (a head started with --num-cpus 0) run nothing and are left out."""
    cpus = [c for c in cpus if c >= 1]
    if not cpus:
        raise UsageError("the Ray cluster has no node with CPUs")
    if cpus_per_run is None:
        if len(set(cpus)) > 1:
            log(
                f"nodes differ in CPUs ({', '.join(map(str, sorted(set(cpus))))}): each run reserves {min(cpus)}, the "
                "smallest node's; runs that share a larger node are marked in their records"
            )
        return min(cpus)
    if cpus_per_run > max(cpus):
        raise UsageError(f"--cpus-per-run {cpus_per_run} is more than any node has (the largest has {max(cpus)})")
    return cpus_per_run


def code_version() -> str:
    """The version of this project's code in this process: its git commit (with +dirty), else the
    installed package's version."""
    from importlib.metadata import PackageNotFoundError, version

    from ..system.machine import git_commit

    commit = git_commit()
    if commit:
        return commit
    try:
        return f"package {version('mnist-cnn-bench')}"
    except PackageNotFoundError:
        return "unknown"


def device_for(config: TrainConfig, nodes: list[tuple[int, int]]) -> str:
    """Where the cluster runs a config: its device, or for 'auto' cuda when some node has a GPU."""
    device = config.variant.device
    if device == "auto":
        return "cuda" if any(gpus for _, gpus in nodes) else "cpu"
    return device


def unplaceable(cpus: int, gpus: int, nodes: list[tuple[int, int]]) -> str | None:
    """Why no live node can hold a run that reserves `cpus` and `gpus`, or None when one can."""
    if any(c >= cpus and g >= gpus for c, g in nodes):
        return None
    if gpus and not any(g for _, g in nodes):
        return "it needs a GPU and no live node of the Ray cluster has one"
    return f"it reserves {cpus} CPUs{f' and {gpus} GPU' if gpus else ''} and no live node of the Ray cluster has that"


def train_on_node(config: TrainConfig, key: RunKey, dataset, cpus: int, driver_code: str | None = None) -> dict:
    """A Ray task's body: check that this node runs the driver's code, train one run here under its key
    (threads: the config's own, else the `cpus` reserved) and send back the record as JSON and the
    weights as a CPU state_dict."""
    ray = _ray()
    here = code_version()
    if driver_code is not None and here != driver_code:
        raise UsageError(f"this node runs code {here}, the driver {driver_code}: install the driver's commit on every node")
    model, record = train(config, dataset, progress=False, log=lambda line: None, key=key)
    node_id = ray.get_runtime_context().get_node_id()
    node = next((n for n in ray.nodes() if n["NodeID"] == node_id), {})
    total = int(node.get("Resources", {}).get("CPU", 0)) or None
    record.machine["ray"] = {
        "node_id": node_id,
        "node_ip": node.get("NodeManagerAddress"),
        "cpus_reserved": cpus,
        "node_cpus": total,
    }
    if total and cpus < total:
        record.busy_before_start = record.busy_before_start | {
            "busy": True,
            "reason": f"packed by Ray: {cpus} of the node's {total} CPUs reserved per run, so other runs could share it",
        }
    return {"record": record.to_json(), "weights": weights_state(model)}


def node_label(record: RunRecord) -> str:
    ray_info = record.machine.get("ray") or {}
    return f"{record.machine.get('host', '?')}/{str(ray_info.get('node_id', '?'))[:6]}"


def failure_reason(exc: Exception) -> str:
    """One line for a run that failed on its node: the training's own error, or what Ray saw."""
    ray = _ray()
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else exc
    if cause is None:
        cause = exc
    if isinstance(cause, MnistBenchError):
        return str(cause)
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_cluster_sweep(
    configs: list[TrainConfig],
    runs_dir: Path,
    address: str = DEFAULT_ADDRESS,
    cpus_per_run: int | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    progress: bool = True,
    log=print,
    redo_contended: bool = False,
    task=train_on_node,
) -> dict:
    """The sweep of sweep.run_sweep, one Ray task per run; the same counts, plus `failed`: a list of
    (run name, reason). `task` is the remote body (tests wrap it to inject faults)."""
    ray = _ray()
    store = RunStore(runs_dir)
    started = connect(address)
    pending: dict = {}  # ObjectRef -> (run, plan)
    bar = None
    try:
        nodes = live_nodes()
        cpus = reservation([c for c, _ in nodes], cpus_per_run, log)
        todo, skipped, keys = plan_sweep(
            configs, store, redo_contended, log, default_threads=cpus, device_for=lambda c: device_for(c, nodes)
        )
        driver_code = code_version()
        if skipped:
            log(f"skipping {skipped} finished run(s) already in {runs_dir}")
        counts = new_counts(skipped, keys)
        if not todo:
            return counts
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="runs", unit="run", file=sys.stderr, dynamic_ncols=True)
        write = bar.write if bar is not None else log
        datasets = {name: ray.put(load_dataset(name, todo[0].config.data_root)) for name in {run.key.dataset for run in todo}}
        remote = ray.remote(task)
        needs = {}  # ObjectRef -> (cpus, gpus) it reserves
        for run in todo:
            # A CUDA run reserves one GPU (and its CPUs as above): one timed run per GPU; a CPU run none.
            gpus = 1 if run.key.variant.device == "cuda" else 0
            why = unplaceable(cpus, gpus, nodes)
            if why:
                counts["failed"].append((run.key.name, f"cannot be placed: {why}"))
                write(f"   FAILED {run.key.name}: cannot be placed: {why}")
                continue
            plan = take(store, run, redo_contended, counts, write)
            if plan is not None:
                write(started_line(run, plan) + f": queued ({cpus} CPUs per run)")
                options = dict(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries, retry_exceptions=False)
                ref = remote.options(**options).remote(run.config, run.key, datasets[run.key.dataset], cpus, driver_code)
                pending[ref] = (run, plan)
                needs[ref] = (cpus, gpus)
        per_node: Counter = Counter()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
            if not ready:  # nothing came back for a while: can every pending run still be placed?
                nodes = live_nodes()
                for stuck in [r for r in pending if unplaceable(*needs[r], nodes)]:
                    run, _ = pending.pop(stuck)
                    ray.cancel(stuck, force=True)
                    store.release(run.key)
                    why = f"cannot be placed any more: {unplaceable(*needs[stuck], nodes)}"
                    counts["failed"].append((run.key.name, why))
                    write(f"   FAILED {run.key.name}: {why}")
                continue
            [ref] = ready
            run, plan = pending.pop(ref)
            name = run.key.name
            try:
                result = ray.get(ref)
                record = RunRecord.from_json(result["record"], f"the record sent back for {name}")
                store_result(store, plan, record, result["weights"], counts, write, where=f" on {node_label(record)}")
                per_node[node_label(record)] += 1
            except (
                ray.exceptions.RayError,
                CheckpointError,
            ) as exc:  # the run's failure; the driver's own (WriteError) stops the sweep
                reason = failure_reason(exc)
                counts["failed"].append((name, reason))
                write(f"   FAILED {name}: {reason}")
            finally:
                store.release(run.key)
            if bar is not None:
                bar.set_postfix_str(", ".join(f"{node} {n}" for node, n in sorted(per_node.items())))
                bar.update(1)
        return counts
    finally:
        for ref, (run, _) in pending.items():  # stopped early: end the queued work, free its claims
            ray.cancel(ref, force=True)
            store.release(run.key)
        store.prune_empty()
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
