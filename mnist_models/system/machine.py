"""What machine a number was measured on, and whether something else was using it at the time.

Two torch processes on two cores oversubscribe threads (a 27 ms train step was seen at 283 ms
beside another run), so every record and report carries a `busy` verdict measured before the work.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import torch

from .allocator import allocator_state

# Where the CPU's identity is read. Tests point it at a made-up file to play a machine never seen
# (tests/test_evidence.py); users have no reason to set it.
CPUINFO_ENV = "MNIST_BENCH_CPUINFO"


def _cpuinfo_path() -> str:
    return os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo"


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        fields = {}
        with open(_cpuinfo_path()) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:  # end of the first processor's block
                    break
        if "model name" in fields:
            # A VM's model name can be as vague as "AMD EPYC": family and model tell Zen 3 (25) from Zen 5 (26).
            ident = (
                f" (family {fields['cpu family']}, model {fields['model']})"
                if "cpu family" in fields and "model" in fields
                else ""
            )
            return fields["model name"] + ident
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_isa() -> list[str]:
    """The vector/matrix extensions that decide which kernels run (bf16 needs AVX-512 BF16 or AMX)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    try:
        with open(_cpuinfo_path()) as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


# The extensions that run bf16 at hardware speed. Without one, oneDNN and ATen emulate bf16 through
# fp32 conversions: on a Zen 3 EPYC (AVX2 only) a bf16 train step measured 7x (simple) to 20x (deep)
# slower than fp32, and a bf16 matmul 1.2 against 170 GFLOP/s.
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
# Measured with `mnist-bench ab --a eager-fp32 --b eager-bf16 --rounds 10 --steps 5` on a Zen 3 EPYC (AVX2 only, 2 threads):
# simple 6.05x (5.56-6.71), deep 13.57x (13.26-15.14), train step at batch 100. Quoted everywhere from here.
EMULATED_BF16_SLOWDOWN = "6-14x slower than fp32 (a train step at batch 100, measured on a Zen 3 EPYC with AVX2 only)"


def native_bf16(machine: dict | None = None) -> bool:
    """Does this CPU (or the machine block of a record or benchmark JSON) run bf16 natively?"""
    isa = cpu_isa() if machine is None else machine.get("cpu_isa")
    return bool(set(isa or []) & set(NATIVE_BF16))


def emulated_half_warning(device: str, precision: str) -> str | None:
    """One line for a bf16/fp16 CPU run on a CPU without native bf16, else None."""
    if device != "cpu" or precision == "fp32" or native_bf16():
        return None
    return (
        f"WARNING: {precision} on this CPU is emulated (it has no AVX-512 BF16 or AMX): expect it {EMULATED_BF16_SLOWDOWN}; "
        "fp32 is the fast choice here"
    )


@lru_cache(maxsize=1)
def torch_cpu_build() -> dict:
    """What torch's CPU kernels use here: the capability its kernels dispatch to, oneDNN and BLAS."""
    config = torch.__config__.show()
    onednn = re.search(r"(?:MKL-DNN|oneDNN) v([\w.]+)", config)
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": onednn.group(1) if onednn else None,
        "blas": blas.group(1) if blas else None,
        "native_bf16": native_bf16(),
    }


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


# Other processes using more than this many cores make a timing an upper bound (on these 2-core
# machines a 27 ms train step was seen at 283 ms beside another torch run).
BUSY_CORES = 0.25


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity mask (taskset, SLURM), capped by a cgroup v2 CPU
    quota (a container's --cpus), never the machine's whole count when either is narrower."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _size(text: str) -> int:
    """'512K' / '32768K' / '1M' (sysfs cache sizes) in bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip()
    return int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text or 0)


def cache_capacity(threads: int, cache_root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[str, int]:
    """Bytes of L2 (per core, times the threads that run: each brings its own) and of the last-level
    cache (shared), read from sysfs; {} where it cannot be read."""
    levels: dict[int, int] = {}
    try:
        for index in cache_root.glob("index*"):
            if (index / "type").read_text().strip() in ("Unified", "Data"):
                levels[int((index / "level").read_text())] = _size((index / "size").read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    if 2 in levels:
        out["L2"] = levels[2] * max(1, threads)
    if levels and max(levels) > 2:
        out["LLC"] = levels[max(levels)]
    return out


def set_threads(threads: int) -> int:
    """The one place torch's intra-op thread count is set; returns the count it replaced."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    return before


MIN_SAMPLE_S = 0.2  # the least time a busy check samples: /proc/stat counts in 10 ms ticks


def busy_check(sample_seconds: float = 0.5, since: CpuContention | None = None, siblings_seconds: float = 0.0) -> dict:
    """How much of the CPU other processes use, plus load and thread counts.

    Without `since`, it samples `sample_seconds` while this process waits (call it before the work).
    With `since` (a CpuContention started earlier, e.g. when a run's set-up began) the set-up itself is
    the sample, this process's own CPU time (and `siblings_seconds`, its job's other ranks') taken out:
    no idle wait before the work; a set-up shorter than MIN_SAMPLE_S is topped up by waiting.
    """
    cores = os.cpu_count() or 1
    if since is None:
        since = CpuContention()
        time.sleep(sample_seconds)
    else:
        time.sleep(max(0.0, MIN_SAMPLE_S - since.seconds()))
    others = since.cores_used_by_others(siblings_seconds)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    threads = torch.get_num_threads()
    reasons = []
    if others is not None and others > BUSY_CORES:
        reasons.append(f"other processes were using {others:.1f} of {cores} cores")
    if threads > cores:
        reasons.append(f"torch uses {threads} threads on {cores} cores")
    return {
        "busy": bool(reasons),
        "reason": "; ".join(reasons),
        "cores_used_by_others": others,
        "load_1min": round(load1, 2) if load1 is not None else None,
        "cores": cores,
        "torch_threads": threads,
    }


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuContention:
    """Cores used by *other* processes while this one works: all CPU time minus our own.

    busy_check() reads one over a run's set-up (or a wait); a run keeps another over its epochs, which
    catches a neighbour that starts halfway through.
    """

    def __init__(self) -> None:
        self._start = _cpu_times()
        self._own = _own_cpu()
        self._wall = time.perf_counter()

    def seconds(self) -> float:
        """Wall seconds since it started."""
        return time.perf_counter() - self._wall

    def own_seconds(self) -> float:
        """CPU seconds this process and the children it waited for (e.g. a benchmark's torchrun jobs) used since the start."""
        return _own_cpu() - self._own

    def cores_used_by_others(self, siblings_seconds: float = 0.0) -> float | None:
        """`siblings_seconds`: CPU time of processes of the same job on this machine (other DDP ranks),
        which are not strangers."""
        end, own = _cpu_times(), self.own_seconds()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        ticks_per_second = os.sysconf("SC_CLK_TCK")
        wall = (end[1] - self._start[1]) / ticks_per_second / (os.cpu_count() or 1)
        others = (end[0] - self._start[0]) / ticks_per_second - own - siblings_seconds
        return round(max(others, 0.0) / wall, 2) if wall > 0 else None


# The ISA classes that decide which kernels run, fastest first: a key names the first the CPU has.
# Virtual CPUs often report a generic name ("Intel(R) Xeon(R) Processor"), and two such machines
# differ by 3x in bf16; the class tells them apart.
ISA_CLASSES = (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))
# Words of a CPU's model name that say nothing about what it computes.
_NAME_NOISE = re.compile(r"\((?:R|TM|tm)\)|\bCPU\b|\bProcessor\b|\b\d+-Core\b|@\s*[\d.]+\s*GHz")


def isa_class(machine: dict) -> str:
    isa = set(machine.get("cpu_isa") or [])
    return next((name for flag, name in ISA_CLASSES if flag in isa), "baseline-isa")


def machine_key(machine: dict) -> str:
    """The stable, readable name of a machine: CPU name, family, model, ISA class (and GPU), as a file
    or folder name, e.g. 'AMD-EPYC-family-25-model-17-avx512bf16'. Evidence is stored under it."""
    cpu = _NAME_NOISE.sub(" ", str(machine.get("cpu") or "unknown-cpu"))
    gpu = f"-{machine['gpu']}" if machine.get("gpu") else ""
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{cpu}-{isa_class(machine)}{gpu}").strip("-")


def machine_label(machine: dict) -> str:
    """A machine as a reader wants it in a sentence: its CPU, the extensions its kernels use, its GPU."""
    isa = ", ".join(machine.get("cpu_isa") or []) or "ISA unknown"
    gpu = f"; GPU {machine['gpu']}" if machine.get("gpu") else ""
    return f"{machine.get('cpu', '?')} [{isa}]{gpu}"


def this_machine() -> dict:
    """The fields of machine_info that name this machine (cheap: no git, no torch config)."""
    machine = {"cpu": cpu_model(), "cpu_isa": cpu_isa()}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name()
    return machine


def evidence_dir(machine: dict | None = None, machines_dir: Path | None = None) -> Path:
    """The folder of one machine's evidence (this machine's by default): <machines_dir>/<machine_key>."""
    from .paths import MACHINES_DIR

    return Path(machines_dir or MACHINES_DIR) / machine_key(machine or this_machine())


def mixed_machines_warning(machines: list[dict], what: str = "runs") -> str | None:
    """One line when the records behind a table come from more than one machine, else None."""
    counts = Counter(machine_label(machine) for machine in machines)
    if len(counts) < 2:
        return None
    listed = "; ".join(f"{key}: {count} {what}" for key, count in counts.items())
    return (
        f"WARNING: these {what} come from {len(counts)} different machines ({listed}); "
        "times compare only between records of one machine"
    )


def busy_warning(check: dict) -> str | None:
    if not check["busy"]:
        return None
    return f"WARNING: machine busy ({check['reason']}); timings from this run are not trustworthy"


# The paths whose edits change a number; edits elsewhere (reports, records, docs, tests) do not.
CODE_PATHS = ("mnist_models", "bench", "scripts", "pyproject.toml")


def git_commit() -> str | None:
    """The commit of the code that made a number (with '+dirty' when that code has uncommitted edits), if known."""
    import subprocess

    from .paths import SOURCE_ROOT

    root = SOURCE_ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def code_fingerprint(package: Path | None = None) -> str:
    """A digest of the library's own source files as this process loaded them: two processes that
    agree on it run the same code, committed or not, checkout or installed package."""
    import hashlib

    package = Path(package or Path(__file__).resolve().parents[1])
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def machine_info() -> dict:
    """Versions and hardware, for the top of every record and report."""
    info = {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "platform": platform.platform(),
        "code": git_commit(),
        "cache_bytes": cache_capacity(1),
        "allocator": allocator_state(),  # L2 of one core, the last-level cache: the roofline's levels
        **torch_cpu_build(),
    }
    info["numerics"] = numerics_flags()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cudnn"] = torch.backends.cudnn.version()
        info["cuda_driver"] = _cuda_driver()
    return info


def numerics_flags() -> dict:
    """The settings that change what "fp32" means and which kernels run on CUDA, as this process has them.
    In torch 2.14, cuDNN convolutions default to TF32 while matmuls stay FP32: an "fp32" CUDA row is
    TF32 convolutions plus FP32 linear layers unless these say otherwise. Recorded on CPU too (where
    they change nothing), so that every record and report has the same fields."""
    return {
        "conv_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
    }


def describe_numerics(flags: dict) -> str:
    """'conv TF32 on, matmul TF32 off (highest), cuDNN autotuning on, deterministic off'."""
    onoff = {True: "on", False: "off"}
    return (
        f"conv TF32 {onoff[bool(flags.get('conv_tf32'))]}, matmul TF32 {onoff[bool(flags.get('matmul_tf32'))]} "
        f"({flags.get('float32_matmul_precision', '?')}), cuDNN autotuning {onoff[bool(flags.get('cudnn_benchmark'))]}, "
        f"deterministic {onoff[bool(flags.get('deterministic_algorithms') or flags.get('cudnn_deterministic'))]}"
    )


def _cuda_driver() -> str | None:
    """The driver's CUDA version (e.g. '12.8'), which must be at least the wheel's."""
    try:
        version = torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None
    except Exception:  # noqa: BLE001  a driver that cannot say is recorded as unknown
        version = None
    if isinstance(version, int):
        return f"{version // 1000}.{version % 1000 // 10}"
    return version


def reset_peak_memory(device: str) -> None:
    """Start a fresh peak: CUDA's allocator counter, or the process's RSS high-water mark on Linux.

    Without the reset, the second run of a sweep would report the first run's peak.
    """
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


def peak_memory_mb(device: str) -> tuple[float, str]:
    """Peak memory since reset_peak_memory, and what kind of peak it is."""
    if device == "cuda":
        reserved = torch.cuda.max_memory_reserved() / 2**20
        return torch.cuda.max_memory_allocated() / 2**20, (
            f"cuda max_memory_allocated during training, the device-resident dataset included (max reserved {reserved:.0f} MB)"
        )
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024, "process peak RSS during the run (includes the dataset)"
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process lifetime peak RSS (includes the dataset)"


# The code a timing depends on: the nets, how a step is built and fed, the clock, the host allocator and
# the suites. A change elsewhere (a report, the statistics) leaves the figure as it was measured.
TIMED_CODE = (
    "mnist_models/core/nets.py",
    "mnist_models/core/harness.py",
    "mnist_models/core/variants.py",
    "mnist_models/core/data.py",
    "mnist_models/core/blocks.py",
    "mnist_models/core/timing.py",
    "mnist_models/system/allocator.py",
    "bench",
)


def code_age(commit: str | None, paths: tuple[str, ...] = TIMED_CODE, repo: Path | None = None) -> str:
    """How the code that made a figure stands against this checkout: 'current' (`paths` unchanged since
    `commit`), 'stale' (changed since: the figure describes older code), 'dirty' (made from uncommitted
    edits: no commit reproduces it) or 'unknown' (no commit recorded, no git, or a clone without it)."""
    import subprocess

    from .paths import SOURCE_ROOT

    if not commit:
        return "unknown"
    if commit.endswith("+dirty"):
        return "dirty"
    try:
        diff = subprocess.run(
            ["git", "diff", "--quiet", commit, "HEAD", "--", *paths], cwd=repo or SOURCE_ROOT, capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return {0: "current", 1: "stale"}.get(diff.returncode, "unknown")
