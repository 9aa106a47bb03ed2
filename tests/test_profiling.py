"""mnist-bench profile: the trace, the kernel summary, bad input, and TensorBoard's profiler plugin."""

import copy
import gzip
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import torch

from mnist_models import cli
from mnist_models.core.variants import Variant
from mnist_models.profiling.profiler import ProfileConfig, profile
from mnist_models.reporting.kernels import render_kernel_report
from mnist_models.system.errors import UsageError

PLUGIN = "/data/plugin/pytorch_profiler"


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("traces")
    config = ProfileConfig(
        model="simple", mode="train", batch_size=32, wait=1, warmup=1, active=2, out_dir=str(out), variant=Variant(device="cpu")
    )
    run_dir, summary = profile(config, log=lambda line: None)
    return out, run_dir, summary


def test_trace_lands_in_one_named_run_directory(profiled):
    out, run_dir, summary = profiled
    assert run_dir.parent == out and run_dir.name == "simple-train-cpu-eager-fp32-b32"
    traces = list(run_dir.glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any("convolution" in e.get("name", "") for e in events)


def test_summary_names_the_conv_kernels_with_flops(profiled):
    _, _, summary = profiled
    by_layer = {(r["name"], r.get("layer")): r for r in summary["conv_rows"]}
    forward = by_layer[("aten::mkldnn_convolution", "layer2.0")]
    backward = by_layer[("aten::convolution_backward", "layer2.0")]
    first_backward = by_layer[("aten::convolution_backward", "layer1.0")]
    layer2_flops = 2 * 32 * 9 * 64 * 14 * 14 * 32  # batch 32
    assert forward["flops_per_call"] == layer2_flops
    assert backward["flops_per_call"] == 2 * layer2_flops  # input and weight gradients
    assert first_backward["flops_per_call"] == 2 * 1 * 9 * 32 * 28 * 28 * 32  # weight gradient only
    assert forward["gflops_per_s"] > 0 and forward["calls_per_step"] == 1
    assert 0 < summary["conv_share"] < 1
    assert any("max_pool2d" in r["name"] for r in summary["other_rows"])
    shares = sum(r["share"] for r in summary["conv_rows"] + summary["other_rows"])
    assert shares <= 1.0001


def test_the_trace_file_read_by_hta_gives_the_kernel_tables_conv_rows(profiled):
    pytest.importorskip("hta", reason="holistictraceanalysis is not installed (pip install -e '.[traces]')")
    _, _, summary = profiled
    check = summary["trace_check"]
    assert check["reader"] == "HolisticTraceAnalysis" and check["steps"] == 2  # the active steps
    assert len(check["rows"]) == len(summary["conv_rows"]) > 0
    for row in check["rows"]:
        assert row["agree"], row  # same events, two readings: calls, total and self time per step
        assert row["trace"]["calls_per_step"] == row["report"]["calls_per_step"] >= 1
        # "agree" is the file's nanosecond resolution, not a loose percentage: a 0.1% difference would not pass
        assert row["allowed"]["self_ms_per_step"] < 1e-3 * row["report"]["self_ms_per_step"]
    text = render_kernel_report([summary], "test")
    assert f"for {len(check['rows'])} of {len(check['rows'])} convolution rows" in text


def test_the_cross_check_names_a_row_that_disagrees(profiled):
    pytest.importorskip("hta", reason="holistictraceanalysis is not installed (pip install -e '.[traces]')")
    from mnist_models.profiling.trace_check import cross_check, trace_files

    _, run_dir, summary = profiled
    tampered = copy.deepcopy(summary)
    tampered["conv_rows"][0]["self_ms_per_step"] *= 3
    check = cross_check(tampered, trace_files(run_dir, run_dir.name)[-1])
    first, *rest = check["rows"]
    assert not first["agree"] and first["worst"] == "self_ms_per_step"
    assert all(r["agree"] for r in rest)
    assert "where they differ" in render_kernel_report([tampered | {"trace_check": check}], "test")


def test_memory_of_a_step_and_the_op_that_allocates_most(profiled):
    from mnist_models.profiling.trace_check import _ALLOCATORS

    _, _, summary = profiled
    memory = summary["memory"]
    first_conv_output_mb = 32 * 32 * 28 * 28 * 4 / 2**20  # batch 32: layer1's conv output alone, 3.1 MB
    assert memory["steps"] == 2
    assert memory["step_peak_mb"] > first_conv_output_mb
    assert memory["highest_allocated_mb"] >= memory["step_peak_mb"]
    top = memory["top_allocating_ops"]
    assert top and all(r["name"] not in _ALLOCATORS and r["mb_per_step"] > 0 for r in top)
    assert [r["mb_per_step"] for r in top] == sorted((r["mb_per_step"] for r in top), reverse=True)
    assert "a step peaks" in render_kernel_report([summary], "test")


def test_kernel_report_renders_every_run(profiled):
    _, _, summary = profiled
    text = render_kernel_report([summary], "test")
    assert "## `simple-train-cpu-eager-fp32-b32`" in text
    assert "aten::mkldnn_convolution" in text and "Top other ops" in text
    assert "different machines" not in text
    elsewhere = {**summary, "run": "elsewhere", "machine": {**summary["machine"], "cpu": "Another CPU", "cpu_isa": ["avx2"]}}
    assert "these profiles come from 2 different machines" in render_kernel_report([summary, elsewhere], "test")
    with pytest.raises(UsageError, match="no profile summaries"):
        render_kernel_report([], "test")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["profile", "--compile", "turbo"], "invalid choice: 'turbo'"),
        (["profile", "--mode", "backward"], "invalid choice: 'backward'"),
        (["profile", "--precision", "int8"], "invalid choice: 'int8'"),
    ],
)
def test_bad_profile_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_profile_cuda_without_gpu(capsys, tmp_path):
    assert cli.main(["profile", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_profile_unwritable_output(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["profile", "--out", str(blocker / "traces")]) == 2
    assert "cannot write" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, route: str, **params):
    url = f"http://127.0.0.1:{port}{PLUGIN}{route}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def tensorboard(profiled):
    """A TensorBoard server on loopback over the profiled run: (port, run name), once it lists the run."""
    out, run_dir, _ = profiled
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tensorboard.main import run_main; run_main()",
            "--logdir",
            str(out),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, runs = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            assert server.poll() is None, f"tensorboard exited: {server.stderr.read()[-2000:]}"
            try:
                runs = _get(port, "/runs")
                if run_dir.name in runs["runs"] and not runs["loading"]:
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(1)
        assert runs and run_dir.name in runs["runs"], f"run never listed: {runs}"
        yield port, run_dir.name
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)


@pytest.mark.slow
def test_tensorboard_profiler_plugin_loads_the_trace(tensorboard):
    port, run = tensorboard
    views = _get(port, "/views", run=run)
    assert {"Overview", "Operator"} <= set(views)
    workers = _get(port, "/workers", run=run, view="Operator")
    assert workers
    spans = _get(port, "/spans", run=run, worker=workers[0])
    table = _get(
        port,
        "/operation/table",
        run=run,
        worker=workers[0],
        span=spans[0] if spans else "",
        view="Operator",
        group_by="Operation",
    )
    names = {row["name"] for row in table["data"]}  # {"metadata": ..., "data": [{"name": ..., ...}]}
    assert {"aten::mkldnn_convolution", "aten::convolution_backward"} <= names


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian's `chromium` package; .ci/run installs it)")
def test_the_plugin_page_in_a_headless_browser_offline(tensorboard, tmp_path):
    """What a user without internet sees (docs/profiling.md): the plugin's page draws its side panel
    (runs, views, workers) from this machine alone, while its charts wait for Google Charts from the
    web; the trace view's viewer ships with the plugin, and the trace it shows is served from here."""
    port, run = tensorboard
    page = f"http://127.0.0.1:{port}{PLUGIN}/index.html"
    dom = _chromium("--dump-dom", page).stdout.decode(errors="replace")
    text = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)).split())
    for shown in ("Runs", run, "Views", "Overview", "Workers"):
        assert shown in text, f"{shown!r} not on the rendered page: {text[:500]}"
    shot = tmp_path / "plugin.png"
    _chromium("--window-size=1280,900", f"--screenshot={shot}", page)
    from PIL import Image

    panel = Image.open(shot).convert("L").crop((0, 100, 340, 480))  # the side panel: run, view and worker menus
    assert panel.getextrema()[0] < 100, "the side panel drew no text"
    # The trace view: its viewer is a page of the plugin that loads nothing from the web ...
    viewer = urllib.request.urlopen(f"http://127.0.0.1:{port}{PLUGIN}/trace_viewer_full.html", timeout=30).read().decode()
    assert len(viewer) > 1_000_000 and not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", viewer)
    # ... and the trace it draws comes from this machine.
    worker = _get(port, "/workers", run=run, view="Overview")[0]
    url = f"http://127.0.0.1:{port}{PLUGIN}/trace?{urllib.parse.urlencode({'run': run, 'worker': worker, 'span': '1'})}"
    with urllib.request.urlopen(url, timeout=30) as response:  # served gzipped, as the viewer asks for it
        trace = json.loads(gzip.decompress(response.read()))
    assert trace["traceEvents"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the line is printed only where there is no GPU")
def test_profile_hides_kinetos_no_gpu_line_and_keeps_other_stderr(tmp_path):
    from mnist_models.profiling.profiler import KINETO_GPU_NOISE

    bare = subprocess.run(
        [sys.executable, "-c", "import torch\nwith torch.profiler.profile():\n    torch.ones(2) + 1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if KINETO_GPU_NOISE not in bare.stderr:
        pytest.skip("this torch build does not print kineto's no-GPU line")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_models",
            "profile",
            "--model",
            "simple",
            "--batch-size",
            "8",
            "--active",
            "1",
            "--warmup",
            "0",
            "--out",
            str(tmp_path / "t"),
            "--summary-dir",
            str(tmp_path / "k"),
            "--report",
            str(tmp_path / "r.md"),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert KINETO_GPU_NOISE not in result.stderr and "trace:" in result.stdout


def test_profile_takes_the_variant_specs_that_train_sweep_and_ab_take(tmp_path, capsys):
    out, summaries = tmp_path / "traces", tmp_path / "kernels"
    common = ["profile", "--model", "simple", "--batch-size", "8", "--wait", "0", "--warmup", "1", "--active", "1"]
    common += ["--out", str(out), "--summary-dir", str(summaries), "--report", str(tmp_path / "k.md"), "--device", "cpu"]
    assert cli.main([*common, "--variant", "tensor-eager-fp32-cl-fast"]) == 0, capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["simple-train-cpu-eager-fp32-cl-fast-b8"]  # the loader token is ignored
    assert cli.main([*common, "--variant", "eager-fp33"]) == 2
    assert "unknown token 'fp33'" in capsys.readouterr().err
