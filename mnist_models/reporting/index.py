"""reports/index.md: one screen per machine, the verdicts first, each linked to the report it comes from.

Read from each machine's evidence folder (reports/machines/<key>/): the benchmark report's headlines
(fastest variant of the train step and of the epoch, with the range the quartiles allow), the
calibrated noise, the tune pick; plus links to every report there and to the accuracy summary of
all machines. It only reads what other commands stored: re-rendering it changes no machine's files.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.bench_row import BenchRow, bench_rows
from ..core.stats import format_level
from ..core.variants import Variant, render_tag
from ..runs.tune import Candidate
from ..system.errors import UsageError
from ..system.machine import TIMED_CODE, code_age, machine_label
from .benchmarks import group_baseline, load_bench_json, pairs_with_level, speedup_cell
from .markdown import code, fmt_time, md, plural

REPORT_FILES = (
    "benchmarks-cpu.md",
    "benchmarks-cuda.md",
    "baseline.md",
    "process.md",
    "time-to-accuracy.md",
    "conv-kernels.md",
    "tune.md",
)


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _machine_of(folder: Path) -> dict:
    """The machine block of any JSON the folder holds (all of them name the same machine)."""
    for path in sorted(folder.rglob("*.json")):
        data = _load(path) or {}
        machine = data.get("machine") or (data.get("machine_info") or {}).get("mnist_bench")
        if isinstance(machine, dict) and machine.get("cpu"):
            return machine
    return {}


def _evidence_json(folder: Path) -> str | None:
    """The benchmark JSON a machine's verdicts come from: the full run, else the gate's quick subset."""
    return next((n for n in ("benchmarks-cpu.json", "benchmarks-cuda.json", "baseline.json") if (folder / n).is_file()), None)


def fastest(folder: Path) -> dict[str, tuple[BenchRow, BenchRow]]:
    """Per train-step group at batch 100 and per epoch group that timed more than its baseline:
    (fastest row, its eager fp32 baseline)."""
    name = _evidence_json(folder)
    if name is None:
        return {}
    try:
        rows = bench_rows(load_bench_json(folder / name))
    except UsageError:
        return {}
    groups: dict[str, list[BenchRow]] = {}
    for r in rows:
        if (r.suite == "train-step" and r.identity.batch == 100) or r.suite == "epoch":
            groups.setdefault(r.group, []).append(r)
    out = {}
    for group_name, group in sorted(groups.items()):
        best = min(group, key=lambda r: r.median)
        base = group_baseline(best, group)
        if base is not None and len(group) > 1:  # a group of its baseline alone has no verdict
            out[group_name] = (best, base)
    return out


def _fastest_lines(folder: Path) -> list[str]:
    name = _evidence_json(folder)
    lines = []
    for group_name, (best, base) in fastest(folder).items():
        where = f" on {md(best.identity.dataset)}" if best.suite == "epoch" else ""
        lines.append(
            f"- {md(group_name)}{where}: fastest {code(best.label)} {fmt_time(best.median)}, "
            f"{speedup_cell(base, best)} {'the seed pipeline' if best.suite == 'epoch' else 'eager fp32'} "
            f"([{name.removesuffix('.json')}]({name.replace('.json', '.md')}))"
        )
    return lines


def _process_lines(folder: Path) -> list[str]:
    """The whole-process suite (bench/test_process.py), where a run of it was kept as process.json."""
    try:
        rows = bench_rows(load_bench_json(folder / "process.json")) if (folder / "process.json").is_file() else []
    except UsageError:
        return []
    return [
        f"- the whole `train` process, {md(r.identity.model)}, one epoch on {md(r.identity.dataset)}: {code(r.label)} "
        f"{fmt_time(r.median)}, {r.speedup_vs_seed_process:.2f}x ({r.speedup_low:.2f}-{r.speedup_high:.2f}) the seed "
        f"pipeline's process, {pairs_with_level(r)} ([process](process.md))"
        for r in sorted(rows, key=lambda r: r.identity.model or "", reverse=True)
        if r.speedup_vs_seed_process
    ]


def _noise_lines(folder: Path) -> list[str]:
    data = _load(folder / "noise.json") or {}
    lines = []
    for benchmark, entry in sorted((data.get("benchmarks") or {}).items()):
        if entry.get("protocol") == "held-out":
            detection = ", ".join(
                f"{100 * float(share):.0f}% {100 * rate:.0f}%" for share, rate in sorted(entry.get("detection", {}).items())
            )
            mde = entry.get("minimum_detectable_effect")
            lines.append(
                f"- noise of {code(benchmark)}: gate threshold {100 * entry.get('threshold', 0):.1f}% set from "
                f"{len(entry.get('aa_setting', []))} A/A runs; held-out A/A runs flagged {entry.get('held_out_false_alarms')}/"
                f"{len(entry.get('aa_held_out', []))}; planted slowdowns caught: {detection}; minimum detectable effect "
                f"{'above the largest plant' if mde is None else f'{100 * mde:.0f}%'} ([noise.json](noise.json))"
            )
            continue
        lines.append(  # calibrations before held-out scoring: their A/A figure was scored on the runs that set it
            f"- noise of {code(benchmark)} (an older calibration: its threshold was scored on the A/A runs it was set "
            f"from, and its plant slept instead of busy-waiting): A/A flagged {entry.get('aa_flagged')}/"
            f"{len(entry.get('aa', []))}, a planted {100 * entry.get('slowdown', 0):.0f}% slowdown "
            f"{entry.get('planted_flagged')}/{len(entry.get('planted', []))}; gate threshold "
            f"{100 * entry.get('threshold', 0):.1f}% ([noise.json](noise.json))"
        )
    return lines


def _level_of(ratio: dict) -> str:
    """A stored interval's level: the exact one it was computed with, or, for one stored before levels
    were (a bootstrap printed as 95% at any n), a plain statement that it is not known."""
    level = ratio.get("level")
    return format_level(level) if level else "level unknown (older run)"


def _tune_spec(best: dict) -> str:
    """A tune pick as a sweep spec (tune.json files before issue 21 hold the variant's fields loose)."""
    variant = best.get("variant") or {k: best.get(k) for k in Variant.SWITCHES}
    return render_tag(loader=best.get("loader"), **{k: v for k, v in Variant(**variant).fields().items() if k != "device"})


def _tune_lines(folder: Path) -> list[str]:
    data = _load(folder / "tune.json") or {}
    lines = []
    for model, best in sorted((data.get("best") or {}).items()):
        spec = _tune_spec(best)
        seed = (data.get("seed_pipeline_epoch_s") or {}).get(model)
        epoch = (data.get("epoch_s") or {}).get(Candidate.from_json({"model": model, **best}).name)
        interleaved = (data.get("speedup_over_seed_pipeline") or {}).get(model)
        if interleaved:  # tune since issue 23: interleaved pairs, with an interval
            ratio = (
                f", {interleaved['estimate']:.2f}x ({interleaved['low']:.2f}-{interleaved['high']:.2f}, "
                f"{interleaved['rounds']} interleaved pairs, interval {_level_of(interleaved)}) the seed pipeline's mnist-5k epoch"
            )
        else:
            ratio = f", {seed / epoch:.2f}x the seed pipeline's mnist-5k epoch (one timing each)" if seed and epoch else ""
        lines.append(
            f"- tune's pick for {model}: {code(spec)} with {best.get('threads')} threads{ratio} ([tune.json](tune.json))"
        )
    return lines


def _accuracy_lines(folder: Path, rel: str) -> list[str]:
    """The machine's run records, read as the accuracy report and its time-to-accuracy report read them."""
    if not (folder / "runs").is_dir():
        return []
    from ..runs.records import RunStore
    from .accuracy import machine_verdicts
    from .tta import verdicts as tta_verdicts

    runs, _ = RunStore(folder / "runs").load_all()
    lines = [f"{line} ([accuracy-vs-cost](accuracy-vs-cost.md))" for line in machine_verdicts(runs)]
    link = f" ([time-to-accuracy]({rel}/time-to-accuracy.md))" if (folder / "time-to-accuracy.md").is_file() else ""
    return lines + [f"- time to accuracy, {line}{link}" for line in tta_verdicts(runs)]


def render_index(reports_dir: Path, machines_dir: Path) -> str:
    out = [
        "# Reports: one section per machine\n",
        "\nGenerated by `mnist-bench report`; do not edit by hand. Times compare only within one machine; each "
        "machine's evidence lives in its own folder. Accuracy, which does not depend on the machine, is pooled in "
        "[accuracy-vs-cost.md](accuracy-vs-cost.md), with every cost under its machine's heading.\n",
    ]
    for folder in sorted(p for p in Path(machines_dir).iterdir() if p.is_dir()):
        rel = folder.relative_to(reports_dir).as_posix()
        machine = _machine_of(folder)
        out.append(f"\n## {md(folder.name)}\n\n{md(machine_label(machine)) if machine else 'machine unknown'}\n\n")
        verdicts = [
            line.replace("](", f"]({rel}/")
            for line in _fastest_lines(folder) + _process_lines(folder) + _noise_lines(folder) + _tune_lines(folder)
        ]
        verdicts += _accuracy_lines(folder, rel)
        out.append("\n".join(verdicts) + "\n" if verdicts else "_No benchmark report, calibration or tune result yet._\n")
        runs = len(list((folder / "runs").rglob("*.json"))) if (folder / "runs").is_dir() else 0
        history = len(list((folder / "history").glob("*.json"))) if (folder / "history").is_dir() else 0
        links = [f"[{name}]({rel}/{name})" for name in REPORT_FILES if (folder / name).is_file()]
        links += [f"{runs} run records (`{rel}/runs/`)"] if runs else []
        links += (
            [f"{plural(history, 'benchmark session')} in its history (`mnist-bench compare {rel}/history`)"] if history else []
        )
        links += [f"[cluster-sweep/]({rel}/cluster-sweep/)"] if (folder / "cluster-sweep").is_dir() else []
        out.append("\nReports: " + "; ".join(links) + "\n" if links else "")
    return "".join(out)


def _spec(row: BenchRow) -> str:
    """The variant as a sweep spec (with the loader for epochs): what to pass to --variant."""
    fields = {k: v for k, v in row.variant.fields().items() if k != "device"}
    return render_tag(loader=row.identity.loader, **fields)


def _tune_epoch_cell(folder: Path, model: str) -> str:
    """Where no benchmark run timed epochs: tune's pick against the seed pipeline, from its interleaved pairs."""
    data = _load(folder / "tune.json") or {}
    best = (data.get("best") or {}).get(model)
    ratio = (data.get("speedup_over_seed_pipeline") or {}).get(model)
    if not best or not ratio:
        return "-"
    spec = _tune_spec(best)
    return (
        f"{ratio['estimate']:.2f}x ({ratio['low']:.2f}-{ratio['high']:.2f}, {_level_of(ratio)}) {code(spec)} on mnist-5k (tune)"
    )


def results_table(machines_dir: Path, link_prefix: str) -> str:
    """The README's answer, one row per run: per machine, the fastest variant of each net's train step
    (batch 100) and epoch against eager fp32 / the seed pipeline from its benchmark run, with the range
    the quartiles allow; where that run timed no epoch, tune's interleaved epochs in a row of their own
    (another run, another dataset, another statistic). Each row names the commit that made it and
    whether the timed code changed since (system/machine.code_age); the gate's calibrated noise, with
    its own commit, sits in the machine's first row. `link_prefix` is the machines folder as the
    reader's page links it."""
    out = [
        "| machine | run | train step, simple | train step, deep | epoch, simple | epoch, deep | noise (gate threshold) | made by |\n",
        "|---|---|---|---|---|---|---|---|\n",
    ]
    for folder in sorted(p for p in Path(machines_dir).iterdir() if p.is_dir()):
        source = _evidence_json(folder)
        link = f"[{md(folder.name)}]({link_prefix}/{folder.name}/{source.replace('.json', '.md')})" if source else md(folder.name)
        rows = []
        if source:
            best = fastest(folder)
            cells = []
            for suite in ("train-step", "epoch"):
                for model in ("simple", "deep"):
                    found = next(((b, base) for b, base in best.values() if b.suite == suite and b.identity.model == model), None)
                    where = f" on {md(found[0].identity.dataset)}" if found and suite == "epoch" else ""
                    cells.append(f"{speedup_cell(found[1], found[0])} {code(_spec(found[0]))}{where}" if found else "-")
            rows.append((code(source), cells, _made_by(_load(folder / source), TIMED_CODE)))
        tune_cells = [_tune_epoch_cell(folder, model) for model in ("simple", "deep")]
        if (not rows or rows[0][1][2:] == ["-", "-"]) and tune_cells != ["-", "-"]:
            rows.append((code("tune.json"), ["-", "-", *tune_cells], _made_by(_load(folder / "tune.json"), TUNED_CODE)))
        if not rows:
            continue
        for n, (run, cells, made_by) in enumerate(rows):
            noise = _noise_cell(folder) if n == 0 else ""
            out.append(f"| {link if n == 0 else ''} | {run} | " + " | ".join(cells) + f" | {noise} | {made_by} |\n")
    return "".join(out)


TUNED_CODE = (*TIMED_CODE, "mnist_models/runs/tune.py")
CALIBRATED_CODE = (*TIMED_CODE, "mnist_models/runs/ab.py", "mnist_models/runs/ab_worker.py")
AGE_NOTES = {
    "current": "",
    "stale": " (stale: the timed code changed since)",
    "dirty": " (uncommitted edits: no commit reproduces it)",
    "unknown": " (age unknown: commit not in this clone)",
}


def _noise_cell(folder: Path) -> str:
    data = _load(folder / "noise.json") or {}
    noise = data.get("benchmarks") or {}
    if not noise:
        return "-"
    thresholds = ", ".join(f"{100 * e.get('threshold', 0):.1f}%" for e in noise.values())
    return f"{thresholds}, by {_made_by(data, CALIBRATED_CODE)}"


def _made_by(data: dict | None, timed_code: tuple[str, ...]) -> str:
    """Which code made a run, when, and how that code stands now: '`c44a3f2` 2026-11-29 (stale: ...)'."""
    if not data:
        return "-"
    machine = data.get("machine") or (data.get("machine_info") or {}).get("mnist_bench") or {}
    entries = data.get("benchmarks") if isinstance(data.get("benchmarks"), dict) else {}  # noise.json: per benchmark
    commits = {machine.get("code")} | {e.get("code") for e in entries.values() if isinstance(e, dict)}
    when = str(data.get("created") or data.get("datetime") or "")[:10]
    named = [f"{code(c)}{AGE_NOTES[code_age(c, timed_code)]}" for c in sorted(c for c in commits if c)]
    return f"{', '.join(named) or 'code unknown'}{f' {when}' if when else ''}"


README_START = "<!-- results: generated by mnist-bench report; do not edit by hand -->"
README_END = "<!-- end of results -->"


def with_results(readme: str, table: str) -> str | None:
    """The README with its generated results block replaced by `table`; None when it has no block."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        return None
    return readme[: start + len(README_START)] + "\n" + table + readme[end:]
