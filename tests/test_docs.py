"""The README and docs/ point at things that exist, and the README's results table is the one the
evidence renders (mnist-bench report rewrites it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mnist_models.reporting.index import README_END, README_START, results_table, with_results
from mnist_models.system.paths import SOURCE_ROOT

PAGES = [SOURCE_ROOT / "README.md", *sorted((SOURCE_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A path in backticks that names a committed place: reports/..., docs/..., scripts/..., bench/..., mnist_models/...
NAMED = re.compile(r"`((?:reports|docs|scripts|bench|mnist_models|tests)/[^`<>*\s]*)`")


def _targets(page: Path) -> list[tuple[str, Path]]:
    text = page.read_text()
    found = [(m, (page.parent / m).resolve()) for m in LINK.findall(text) if "://" not in m]
    found += [(m, (SOURCE_ROOT / m).resolve()) for m in NAMED.findall(text)]
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(SOURCE_ROOT).as_posix())
def test_every_named_path_exists(page):
    targets = _targets(page)
    missing = [name for name, path in targets if not path.exists()]
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_the_checker_sees_links_and_named_paths(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("see [here](gone.md) and `reports/nowhere.md`, not `reports/machines/<machine>/`\n")
    names = [name for name, _ in _targets(page)]
    assert names == ["gone.md", "reports/nowhere.md"]


def test_readme_is_short_and_links_every_doc_page():
    readme = (SOURCE_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 180
    for page in (SOURCE_ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"


def test_readme_results_are_what_the_evidence_renders(committed):
    readme = (committed / "README.md").read_text()
    table = results_table(committed / "reports" / "machines", "reports/machines")
    if "age unknown" in table:
        pytest.skip("this clone lacks commits the evidence names (a shallow clone): it cannot tell stale rows")
    assert README_START in readme and README_END in readme
    assert with_results(readme, table) == readme, "README's results table is stale: run mnist-bench report"


def test_with_results_replaces_only_the_block():
    text = f"intro\n{README_START}\nold\n{README_END}\noutro\n"
    assert with_results(text, "new\n") == f"intro\n{README_START}\nnew\n{README_END}\noutro\n"
    assert with_results("no block here\n", "new\n") is None


def _cluster_sweep_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster_sweep", SOURCE_ROOT / "scripts" / "cluster_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cluster_sweep_index_is_what_its_records_render():
    folder = SOURCE_ROOT / "reports/machines/AMD-EPYC-family-25-model-17-avx512bf16/cluster-sweep"
    rendered = _cluster_sweep_script().render_index(folder)
    assert rendered == (folder / "index.md").read_text(), "stale: scripts/cluster-sweep --index-only --out FOLDER"
    # The figures the docs quote come from the records: the wall times and each run against its twin.
    assert "serial 421 s, Ray 353 s" in rendered and "1.36-1.71x" in rendered


def test_cluster_sweep_index_only_without_sweeps_is_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(SOURCE_ROOT / "scripts" / "cluster_sweep.py"), "--index-only", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "holds no walls.txt" in done.stderr and "Traceback" not in done.stderr


def test_report_rewrites_the_readme_results_of_its_home(tmp_path):
    """`mnist-bench report` re-renders the README's table beside the reports it summarises, and only the table."""
    import os
    import shutil
    import subprocess
    import sys

    zen4 = "AMD-EPYC-family-25-model-17-avx512bf16"
    shutil.copytree(SOURCE_ROOT / "reports" / "machines" / zen4, tmp_path / "reports" / "machines" / zen4)
    (tmp_path / "README.md").write_text(f"# mine\n{README_START}\nthe old table\n{README_END}\nkept\n")
    env = os.environ | {"MNIST_BENCH_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "mnist_models", "report"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith(f"# mine\n{README_START}\n| machine |") and readme.endswith(f"{README_END}\nkept\n")
    assert "the old table" not in readme and f"[{zen4}](reports/machines/{zen4}/benchmarks-cpu.md)" in readme
    assert re.search(r"\| \d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\) `eager-", readme)  # a train step's speedup and range


# A measured figure in prose: a ratio with decimals (2.83x), a time in ms, a rate in GFLOP/s or GB/s,
# an accuracy to four places (0.9234). Definitions (batch 100, 15 epochs, 96.9% for 6 rounds) are not.
FIGURE = re.compile(r"(?<![\w.])(\d+\.\d+x|\d+(?:\.\d+)? ?ms|\d[\d,]*(?:\.\d+)? (?:GFLOP/s|GB/s)|0\.\d{4,})(?![\w])")
# Pages that quote the seed's own document (its printed costs and accuracies), not our measurements.
QUOTING_THE_SEED = {"SEED.md"}


def _figures(text: str) -> set[str]:
    return {m.group(1) for m in FIGURE.finditer(text)}


def _generated_text() -> str:
    reports = SOURCE_ROOT / "reports"
    return "\n".join(p.read_text(errors="replace") for p in reports.rglob("*") if p.suffix in (".md", ".json", ".txt", ".log"))


def test_no_page_states_a_figure_that_no_generated_file_holds():
    generated = _generated_text()
    readme = (SOURCE_ROOT / "README.md").read_text()
    readme = readme.split(README_START)[0] + readme.split(README_END)[-1]  # the table is generated
    pages = {"README.md": readme} | {
        f"docs/{p.name}": p.read_text() for p in sorted((SOURCE_ROOT / "docs").glob("*.md")) if p.name not in QUOTING_THE_SEED
    }
    typed = {name: sorted(f for f in _figures(text) if f not in generated) for name, text in pages.items()}
    typed = {name: figures for name, figures in typed.items() if figures}
    assert not typed, f"figures typed by hand, held by no generated file under reports/: {typed}"


def test_the_figure_check_sees_ratios_times_rates_and_accuracies():
    text = "2.83x faster, 26.7 ms a step, 452 GFLOP/s, 33 GB/s, accuracy 0.9234; batch 100, 15 epochs, 96.9%"
    assert _figures(text) == {"2.83x", "26.7 ms", "452 GFLOP/s", "33 GB/s", "0.9234"}
