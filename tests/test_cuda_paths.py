"""The CUDA path, checked on a CPU: the profile's step time and kernel rows from a synthetic CUDA
profile, the numerics flags in every record and report header, identities that do not depend on the
host's thread count, one place that sets cuDNN autotuning, and a fresh dynamo per compiled case."""

from dataclasses import dataclass, field

import pytest
import torch
from torch.autograd import DeviceType

from mnist_models.core import harness
from mnist_models.core.bench_row import BenchIdentity
from mnist_models.core.nets import build_model
from mnist_models.core.variants import Variant
from mnist_models.profiling.profiler import ProfileConfig, summarise
from mnist_models.reporting.markdown import header
from mnist_models.scale.distributed import Rank, gpu_of
from mnist_models.system.errors import UsageError
from mnist_models.system.machine import machine_info, numerics_flags


@dataclass
class Event:
    """What key_averages gives per row, the fields summarise reads."""

    key: str
    self_device_time_total: float
    device_time_total: float
    device_type: DeviceType = DeviceType.CPU
    count: int = 1
    input_shapes: list = field(default_factory=list)
    self_cpu_time_total: float = 1.0
    cpu_time_total: float = 1.0


class Profile:
    def __init__(self, events):
        self.events = events

    def key_averages(self, group_by_input_shape=False):
        return self.events


def cuda_step() -> list[Event]:
    """One train step's worth of rows, as torch lists them on CUDA: each kernel's time on the op that
    launched it, again as a kernel row, and the step's GPU-side span again."""
    conv_in = [[100, 1, 28, 28], [32, 1, 3, 3], [32]]
    return [
        Event("aten::conv2d", 0.0, 100.0, input_shapes=conv_in),  # a wrapper: its time is its child's
        Event("aten::cudnn_convolution", 100.0, 100.0, input_shapes=conv_in),
        Event("sm90_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc", 100.0, 100.0, DeviceType.CUDA),
        Event("aten::max_pool2d_with_indices", 50.0, 50.0, input_shapes=[[100, 32, 28, 28]]),
        Event("void at::native::max_pool_forward_nchw<float>", 50.0, 50.0, DeviceType.CUDA),
        Event("triton_poi_fused_convolution_relu_0", 0.0, 0.0, DeviceType.CUDA),
        Event("ProfilerStep#3", 150.0, 150.0, DeviceType.CUDA),  # the GPU-side span of the step
    ]


def test_a_cuda_profile_counts_each_kernel_once(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    config = ProfileConfig(model="simple", batch_size=100, wait=0, warmup=0, active=1, variant=Variant("cpu"))
    summary = summarise(Profile(cuda_step()), config, Variant("cuda"), build_model("simple"))
    assert summary["step_ms"] == pytest.approx(0.150)  # 100 us conv + 50 us pool, not 450
    assert [r["name"] for r in summary["conv_rows"]] == ["aten::cudnn_convolution"]  # once, not again as its kernel
    assert summary["conv_rows"][0]["share"] == pytest.approx(100 / 150)
    kernels = {r["name"]: r for r in summary["kernel_rows"]}
    assert set(kernels) == {cuda_step()[2].key, cuda_step()[4].key}  # no annotation, no zero-time row
    assert kernels[cuda_step()[2].key]["convolution"] and not kernels[cuda_step()[4].key]["convolution"]
    from mnist_models.profiling.profiler import _CONV_KERNEL

    assert not _CONV_KERNEL.search("triton_poi_fused_convolution_relu_0")  # inductor's fused epilogue is not a conv
    assert _CONV_KERNEL.search("void cudnn::winograd_nonfused::winogradForwardData4x4<float>")
    assert _CONV_KERNEL.search("void fft2d_r2c_32x32<float>") and _CONV_KERNEL.search("splitKreduce_kernel<float>")


def test_the_numerics_flags_are_in_every_record_and_a_gpu_reports_header():
    flags = machine_info()["numerics"]
    assert flags == numerics_flags()
    assert set(flags) == {
        "conv_tf32",
        "matmul_tf32",
        "float32_matmul_precision",
        "cudnn_benchmark",
        "cudnn_deterministic",
        "deterministic_algorithms",
    }
    gpu_box = {"cpu": "x", "gpu": "Test GPU", "numerics": flags | {"conv_tf32": True, "matmul_tf32": False}}
    text = header("t", gpu_box, ["mnist-5k"], "cmd")
    assert "- **CUDA numerics**: conv TF32 on, matmul TF32 off" in text
    assert "CUDA numerics" not in header("t", {"cpu": "x", "numerics": flags}, ["mnist-5k"], "cmd")  # a CPU report


def test_a_gpu_rows_identity_does_not_hold_the_hosts_threads():
    def ident(device, threads, suite="train-step"):
        return BenchIdentity(suite, Variant(device), "simple", 100, threads)

    assert ident("cuda", 16).differences(ident("cuda", 2)) == []  # two GPU boxes with other core counts compare
    assert ident("cpu", 16).differences(ident("cpu", 2)) == ["threads"]
    assert ident("cuda", 16, "epoch").differences(ident("cuda", 2, "epoch")) == ["threads"]  # the loader runs on the host


def test_one_place_sets_cudnn_autotuning_and_determinism(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    harness.configure_backends(Variant("cuda"))
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    monkeypatch.setenv(harness.DETERMINISTIC_ENV, "1")
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on: None)  # not this process's global state
    harness.configure_backends(Variant("cuda"))
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    monkeypatch.setenv(harness.DETERMINISTIC_ENV, "yes")
    with pytest.raises(UsageError, match="is 0 or 1"):
        harness.configure_backends(Variant("cuda"))


def test_every_compiled_case_starts_from_a_fresh_dynamo(monkeypatch):
    from torch import _dynamo

    resets = []
    monkeypatch.setattr(_dynamo, "reset", lambda: resets.append(1))
    for _ in range(3):
        harness.build("simple", Variant("cpu", compile="default"), "train")  # compiles lazily: nothing runs here
    harness.build("simple", Variant("cpu"), "train")
    assert len(resets) == 3  # one per compiled case, none for eager


def test_a_rank_with_its_own_visible_gpu_uses_it():
    rank = Rank(rank=3, local_rank=3, world_size=4, local_world_size=4, nodes=1)
    assert gpu_of(rank, 4) == 3 and gpu_of(rank, 1) == 0  # the launcher's CUDA_VISIBLE_DEVICES: one GPU each
    with pytest.raises(UsageError, match="has no GPU of its own"):
        gpu_of(rank, 2)


def test_a_cuda_profiles_memory_is_the_devices_not_the_hosts_too(tmp_path):
    import json

    from mnist_models.profiling.trace_check import step_memory

    def mem(ts, total, device_type, nbytes=1 << 20):
        return {
            "name": "[memory]",
            "ph": "i",
            "ts": ts,
            "tid": 1,
            "args": {"Total Allocated": total, "Bytes": nbytes, "Device Type": device_type},
        }

    events = [
        {"name": "ProfilerStep#1", "ph": "X", "ts": 100, "dur": 100, "tid": 1},
        mem(90, 1000 << 20, 0),  # the host allocator's level: the dataset in RAM
        mem(95, 10 << 20, 1),  # the GPU's level before the step
        mem(120, 2000 << 20, 0),
        mem(130, 40 << 20, 1),
    ]
    trace = tmp_path / "t.pt.trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    cuda, cpu = step_memory(trace, device="cuda"), step_memory(trace, device="cpu")
    assert cuda["step_peak_mb"] == pytest.approx(30) and cpu["step_peak_mb"] == pytest.approx(1000)  # never one merged series
