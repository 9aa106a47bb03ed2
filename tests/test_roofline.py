"""The roofline: the bytes model checked by hand, the arithmetic on a made-up machine, the copy's byte
count, and a profiled step matched layer by layer."""

import pytest
import torch
from torch import nn

from mnist_models.core.nets import SimpleCNN, build_model, make_fast
from mnist_models.core.roofline import Roofs, Work, attainable, bandwidth_sizes, copy_op, step_work, verdict
from mnist_models.system.machine import cache_capacity


def _by(work, layer, phase):
    [w] = [w for w in work if w.layer == layer and w.phase == phase]
    return w


def test_a_convolution_and_a_pooling_layer_by_hand():
    work = step_work(SimpleCNN(), batch=100, precision="fp32")
    conv = _by(work, "layer2.0", "forward")  # 32 -> 64 channels, 3x3, on 14x14 images
    n_in, n_out, params = 100 * 32 * 14 * 14, 100 * 64 * 14 * 14, 64 * 32 * 9 + 64
    assert conv.flops == 2 * (32 * 9) * n_out
    assert conv.bytes == 4 * (n_in + n_out) + 4 * params
    assert conv.intensity == pytest.approx(conv.flops / conv.bytes)
    back = _by(work, "layer2.0", "backward")  # grads of input and weights: twice the forward FLOPs
    assert back.flops == 2 * conv.flops and back.bytes == 4 * (n_out + n_in) + 4 * 2 * params + 4 * n_in
    first = _by(work, "layer1.0", "backward")  # images need no gradient: one pass of FLOPs, no grad_in written
    assert first.flops == _by(work, "layer1.0", "forward").flops
    assert first.bytes == 4 * (100 * 32 * 28 * 28 + 100 * 28 * 28) + 4 * 2 * (32 * 9 + 32)
    pool = _by(work, "layer1.2", "forward")  # 2x2 max-pool of (100, 32, 28, 28): int64 indices written too
    pooled = 100 * 32 * 14 * 14
    assert pool.flops == 3 * pooled and pool.bytes == 4 * (4 * pooled + pooled) + 8 * pooled
    half = _by(step_work(SimpleCNN(), batch=100, precision="bf16"), "layer1.2", "forward")
    assert half.bytes == 2 * (4 * pooled + pooled) + 8 * pooled  # bf16 activations, the indices stay int64
    adam = _by(work, "optimizer", "step")
    assert adam.bytes == 7 * 4 * 50_186  # parameter, grad, two moments read; parameter, moments written


def test_the_fast_path_pools_before_relu_and_the_deep_net_has_dropout():
    fast = [(w.layer, w.kind) for w in step_work(make_fast(SimpleCNN()), 10) if w.phase == "forward"]
    assert fast[:3] == [("layer1.0", "conv"), ("layer1.2", "pool"), ("layer1.1", "relu")]
    deep = {w.kind for w in step_work(build_model("deep"), 10)}
    assert deep == {"conv", "relu", "pool", "linear", "dropout", "adam"}


MADE_UP = Roofs(
    compute_gflops=100.0,
    bandwidth_gbs={"L2": 400.0, "LLC": 200.0, "DRAM": 20.0},
    capacity_bytes={"L2": 1_000_000, "LLC": 10_000_000},
    threads=2,
)


def test_roofline_arithmetic_on_a_made_up_machine():
    # 1e9 FLOPs on 1e5 bytes (in L2): compute takes 10 ms, the bytes 0.25 us: compute-bound.
    heavy = attainable(Work("a", "conv", "forward", 1e9, 1e5), MADE_UP)
    assert heavy.roof == "compute" and heavy.level == "L2" and heavy.seconds == pytest.approx(0.01)
    # 1e6 FLOPs on 5e6 bytes (in the LLC): 10 us of compute, 25 us of bandwidth: LLC-bound.
    light = attainable(Work("b", "relu", "forward", 1e6, 5e6), MADE_UP)
    assert light.roof == "LLC" and light.seconds == pytest.approx(25e-6)
    # 1e6 FLOPs on 1e8 bytes (past the LLC): 5 ms at DRAM's 20 GB/s.
    big = attainable(Work("c", "pool", "forward", 1e6, 1e8), MADE_UP)
    assert big.roof == "DRAM" and big.seconds == pytest.approx(5e-3)
    # Far above a tiny roofline time and itself tiny: dispatch, not the kernel. Far above and large: the roof, with headroom.
    tiny = attainable(Work("d", "relu", "forward", 1e3, 1e4), MADE_UP)  # 25 ns at L2's 400 GB/s
    assert verdict(150e-6, tiny) == "overhead" and verdict(1e-7, tiny) == "L2"
    assert verdict(5e-3, light) == "LLC"
    assert verdict(0.012, heavy) == "compute"


def test_the_copy_moves_what_its_tensors_hold():
    call, moved = copy_op(8 * 2**20)
    out = call()
    assert moved == 2 * out.numel() * out.element_size() == 8 * 2**20  # source read + destination written
    sizes = bandwidth_sizes({"L2": 2**20, "LLC": 32 * 2**20})
    assert sizes["L2"] < 2**20 < sizes["LLC"] < 32 * 2**20 < sizes["DRAM"]


def test_cache_capacity_reads_sysfs(tmp_path):
    for index, (level, kind, size) in enumerate(
        [(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "512K"), (3, "Unified", "32768K")]
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    assert cache_capacity(2, tmp_path) == {"L2": 2 * 512 * 1024, "LLC": 32 * 2**20}
    assert cache_capacity(1, tmp_path / "missing") == {}


def test_a_profiled_step_is_matched_layer_by_layer(tmp_path):
    from mnist_models.core.variants import Variant
    from mnist_models.profiling.profiler import ProfileConfig, profile

    config = ProfileConfig(
        model="simple", batch_size=32, wait=1, warmup=1, active=2, out_dir=str(tmp_path), variant=Variant("cpu", fast=True)
    )
    _, summary = profile(config, log=lambda line: None)
    roofline = summary["roofline"]
    layers = {(r["layer"], r["phase"]): r for r in roofline["layers"]}
    # Every layer of the simple net and the optimizer found its ops in the profile.
    assert all(r["measured_ms"] for r in layers.values()), [k for k, r in layers.items() if not r["measured_ms"]]
    assert layers[("layer1.0", "forward")]["ops"] == ["aten::mkldnn_convolution"]
    assert "aten::max_pool2d_with_indices_backward" in layers[("layer2.2", "backward")]["ops"]
    step = roofline["step"]
    assert 0 < step["roofline_ms"] < step["measured_ms"] and step["matched_measured_ms"] <= step["measured_ms"] + 1e-9
    roofs = roofline["roofs"]
    assert roofs["bandwidth_gbs"]["L2"] >= roofs["bandwidth_gbs"]["LLC"] >= roofs["bandwidth_gbs"]["DRAM"] > 0
    assert roofs["compute_gflops"] > 1 and roofs["threads"] == torch.get_num_threads()


def test_the_kernel_report_gives_the_roofline_and_its_plot(tmp_path):
    from mnist_models.core.roofline import RoofMeasurement
    from mnist_models.profiling.roofline import roofline_summary
    from mnist_models.reporting.kernels import write_kernel_report

    model = SimpleCNN()
    rows = [
        {"name": "aten::mkldnn_convolution", "self_ms_per_step": 2.0, "input_shapes": [[100, 1, 28, 28]], "layer": "layer1.0"},
        {"name": "aten::max_pool2d_with_indices", "self_ms_per_step": 1.0, "input_shapes": [[100, 32, 28, 28]]},
    ]
    roofline = roofline_summary(model, 100, "fp32", "train", rows, 10.0, RoofMeasurement(MADE_UP, {"fp32 conv": 100.0}))
    summary = {
        "run": "simple-train-made-up",
        "machine": {"cpu": "Made-up CPU", "cpu_isa": ["avx2"], "cpu_family": "1", "cpu_model_id": "2"},
        "config": {"mode": "train", "batch_size": 100},
        "device_name": "cpu",
        "timeline": "CPU self time",
        "step_ms": 10.0,
        "wall_ms_per_step_while_profiling": 10.0,
        "conv_share": 0.2,
        "conv_rows": [],
        "other_rows": [],
        "trace_dir": "t",
        "roofline": roofline,
    }
    report = write_kernel_report(tmp_path / "conv-kernels.md", [summary], "test")
    text = report.read_text()
    allowed = roofline["step"]["roofline_ms"]
    assert f"{100 * allowed / 10.0:.0f}% of its roofline" in text and "not in the profile" in text
    assert (tmp_path / "roofline-simple-train-made-up.png").stat().st_size > 10_000
    assert isinstance(model, nn.Module)


def test_a_benchmark_row_gets_its_share_of_the_roofline_from_its_runs_roofs():
    from mnist_models.core.bench_row import bench_rows
    from mnist_models.core.roofline import step_roofline
    from mnist_models.reporting.benchmarks import roofline_shares

    def row(name, median, **info):
        return {"name": name, "group": "g", "stats": {"median": median, "iqr": 0.0, "rounds": 5}, "extra_info": info}

    ceiling = dict(suite="ceiling", device="cpu", precision="fp32", threads=2)
    data = {
        "benchmarks": [
            row("conv", 0.01, op="conv-b32", gflops_per_s=100.0, **ceiling),
            *(
                row(f"copy-{lv}", size / gbs / 1e9, op=f"copy-{lv}", bytes_per_call=size, **ceiling)
                for lv, size, gbs in (("L2", 1e6, 400.0), ("LLC", 1e7, 200.0), ("DRAM", 1e9, 20.0))
            ),
            row("step", 0.05, suite="train-step", model="simple", device="cpu", precision="fp32", batch=100, threads=2),
        ]
    }
    machine = {"cache_bytes": {"L2": 500_000, "LLC": 10_000_000}}
    shares = roofline_shares(bench_rows(data), machine)
    expected, roof = step_roofline(step_work(SimpleCNN(), 100), MADE_UP)  # the same roofs as the made-up machine
    assert shares["step"][0] == pytest.approx(expected / 0.05, rel=1e-6) and shares["step"][1] == roof
    assert roofline_shares(bench_rows(data), {}) == {}  # no cache sizes recorded: no roofline
