"""Run records of every machine (+ each machine's benchmark JSON) -> reports/accuracy-vs-cost.md
and its plots.

One section per dataset: runs from different datasets are never averaged together. Within a
dataset, the accuracy table groups runs by model, loader, variant and recipe, pooled over machines
and thread counts (it says how many runs came from each machine). Every cost figure (the cost
table, the time to reach an accuracy, the cheapest run, the Pareto plot, latencies) sits in a
section per machine, headed by the machine, since times never transfer between machines. Each group
reports the spread over its seeds, so a difference between the nets can be weighed against
seed-to-seed noise.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from ..core.bench_row import bench_rows
from ..core.recipes import Recipe
from ..core.seed_recipe import SEED, SEED_EPOCHS
from ..core.variants import Variant
from ..runs.config import is_seed_way
from ..runs.records import RunRecord
from ..system import atomic
from ..system.machine import machine_key, machine_label
from .markdown import fmt_num, header, md, plural, table

# The seed's printed per-epoch costs (MNIST, its unnamed machine) and accuracies (raw-pixel evaluation).
SEED_COSTS = {
    "simple": [
        0.225939184,
        0.0630982518,
        0.0463336967,
        0.0374494195,
        0.0313653052,
        0.0261803828,
        0.0218190774,
        0.0183058828,
        0.0164249353,
        0.0131303286,
        0.00988870859,
        0.00991326477,
        0.00879074447,
        0.0067628026,
        0.00727953995,
    ],
    "deep": [
        0.190638304,
        0.0532845221,
        0.037660379,
        0.0296484027,
        0.0239125956,
        0.0203637555,
        0.0181394033,
        0.0136777712,
        0.0135163562,
        0.0108031444,
        0.00989781693,
        0.0114726787,
        0.00667280518,
        0.00744756451,
        0.00912202988,
    ],
}
SEED_ACCURACY = {"simple": 0.9874, "deep": 0.9838}
# Accuracy pools over machines and thread counts (they change no result beyond rounding); cost never does.
RECIPE_KEYS = ["model", "loader", "tag", "epochs_cfg", "batch_size", "lr", "schedule", "ranks"]
GROUP_KEYS = [*RECIPE_KEYS, "threads", "machine_key"]


def runs_frame(runs: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for r in runs:
        cfg = r.config
        replaced = r.replaces or {}
        replaced_machine = replaced.get("machine") if isinstance(replaced.get("machine"), dict) else None
        rows.append(
            {
                "dataset": r.dataset.name,
                "train_images": r.dataset.train,
                "test_images": r.dataset.test,
                "model": cfg.model,
                "loader": cfg.loader,
                "tag": r.variant.tag,
                "variant": r.variant,
                "epochs_cfg": cfg.epochs,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "schedule": cfg.schedule,
                "seed": cfg.seed,
                "threads": r.threads,
                "ranks": cfg.ranks,
                "accuracy": r.test_accuracy,
                "seed_style": r.seed_style_accuracy,
                "train_seconds": r.train_seconds,
                "sec_per_epoch": r.train_seconds / len(r.epochs),
                "params": r.model.params,
                "flops": r.model.flops_per_image,
                "peak_mb": r.peak_memory_mb,
                "lat1_ms": r.inference_ms.get("1"),
                "lat1000_ms": r.inference_ms.get("1000"),
                "contended": r.contended,
                "machine_key": r.machine_key,
                "replaced_accuracy": replaced.get("test_accuracy"),
                "replaced_elsewhere": bool(replaced_machine) and machine_key(replaced_machine) != r.machine_key,
                "curve": [e.test_accuracy for e in r.epochs],
                "costs": [e.cost for e in r.epochs],
                "cum_seconds": list(pd.Series([e.seconds for e in r.epochs]).cumsum()),
                "machine": r.machine,
            }
        )
    return pd.DataFrame(rows)


def full_budget(runs: list[RunRecord]) -> list[RunRecord]:
    """The runs that trained their whole budget: a run stopped at a time-to-accuracy target ends with an
    accuracy that is not its recipe's (reporting/tta.py scores those)."""
    return [r for r in runs if r.key.target is None]


def without_trials(runs: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """(kept, left out): a run of the seed's recipe cut short (--epochs below the seed's, the rest the
    seed's) beside full-length runs of the same net, dataset, loader and variant is a trial (a quick
    check written to the runs folder), not a recipe this report compares: it would add a row of its
    own to every table. Left out, and the report says how many."""

    def family(r: RunRecord) -> tuple:
        c = r.config
        return (r.dataset.name, c.model, c.loader, r.variant.tag, c.batch_size, c.lr, c.schedule, c.ranks)

    full = {family(r) for r in runs if r.config.epochs == SEED_EPOCHS}
    kept, trials = [], []
    for r in runs:
        (trials if r.config.epochs < SEED_EPOCHS and family(r) in full else kept).append(r)
    return kept, trials


def _label(g: pd.Series | dict) -> str:
    ranks = f", {g['ranks']} DDP ranks" if g["ranks"] > 1 else ""
    return f"{g['model']} {g['loader']}-loader {g['tag']}{ranks}"


def _is_seed_recipe(row) -> bool:
    """A report row (a run or a group of runs) of the seed's way at any epoch budget (runs/config.py owns the test)."""
    recipe = Recipe(row["epochs_cfg"], row["batch_size"], row["lr"], row["schedule"])
    return is_seed_way(row["loader"], row["variant"], row["ranks"], recipe, any_epochs=True)


def _time_to(row, target: float) -> float | None:
    for acc, seconds in zip(row["curve"], row["cum_seconds"]):
        if acc is not None and acc >= target:
            return seconds
    return None


def summarise_groups(df: pd.DataFrame, keys: list[str] = GROUP_KEYS) -> pd.DataFrame:
    def agg(g: pd.DataFrame) -> pd.Series:
        # n counts seeds, not records: one seed trained at two thread counts (or on two machines) is one
        # sample of the seed-to-seed spread, its accuracy the mean of its records
        per_seed = g.groupby("seed")[["accuracy", "seed_style"]].mean()
        return pd.Series(
            {
                "n": len(per_seed),
                "records": len(g),
                "seeds": sorted(per_seed.index),
                "acc_mean": per_seed["accuracy"].mean(),
                "acc_std": per_seed["accuracy"].std(ddof=1) if len(per_seed) > 1 else 0.0,
                "acc_min": per_seed["accuracy"].min(),
                "acc_max": per_seed["accuracy"].max(),
                "seed_style_mean": per_seed["seed_style"].mean(),
                "seed_style_std": per_seed["seed_style"].std(ddof=1) if len(per_seed) > 1 else 0.0,
                "sec_per_epoch": g["sec_per_epoch"].mean(),
                "train_seconds": g["train_seconds"].mean(),
                "train_seconds_std": g["train_seconds"].std(ddof=1) if len(g) > 1 else 0.0,
                "lat1_ms": g["lat1_ms"].median(),
                "lat1000_ms": g["lat1000_ms"].median(),
                "params": g["params"].iloc[0],
                "flops": g["flops"].iloc[0],
                "peak_mb": g["peak_mb"].max(),
                "contended": bool(g["contended"].any()),
                "variant": g["variant"].iloc[0],
                "runs": g,
            }
        )

    return df.groupby(keys, sort=True).apply(agg, include_groups=False).reset_index()


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, accuracy) points: True where no other point is cheaper-or-equal and at least as accurate."""
    flags = []
    for i, (c, a) in enumerate(points):
        dominated = any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def plot(groups: pd.DataFrame, dataset: str, machine: str, path: Path) -> Path:
    """Accuracy against training time (one machine's runs: times do not transfer) and per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6.5))
    flags = pareto(list(zip(groups["train_seconds"], groups["acc_mean"])))
    for (_, g), on_front in zip(groups.iterrows(), flags):
        ax1.errorbar(
            g["train_seconds"],
            g["acc_mean"],
            xerr=g["train_seconds_std"],
            yerr=g["acc_std"],
            fmt="o",
            capsize=4,
            label=f"{_label(g)}, {g['epochs_cfg']} ep, {g['threads']} thr (n={g['n']})",
            markersize=9 if on_front else 6,
            markeredgecolor="black" if on_front else None,
            markeredgewidth=2 if on_front else 0,
        )
        curves = pd.DataFrame(list(g["runs"]["curve"]))
        epochs = range(1, curves.shape[1] + 1)
        line = ax2.plot(epochs, curves.mean(), label=_label(g))[0]
        ax2.fill_between(epochs, curves.min(), curves.max(), alpha=0.2, color=line.get_color())
    front = sorted((c, a) for (c, a), on in zip(zip(groups["train_seconds"], groups["acc_mean"]), flags) if on)
    if len(front) > 1:  # the Pareto front as a staircase: the best accuracy bought at each cost
        ax1.step(
            [c for c, _ in front],
            [a for _, a in front],
            where="post",
            color="black",
            linewidth=1,
            alpha=0.6,
            label="Pareto front",
            zorder=0,
        )
    ax1.set_xlabel("training time, s (mean over seeds; bars: std)")
    ax1.set_ylabel("final test accuracy (bars: std over seeds)")
    ax1.set_title(f"{dataset} on {machine}: accuracy vs training time\n(outlined + line: Pareto front)", fontsize=10)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test accuracy (mean; band: min-max over seeds)")
    ax2.set_title(f"{dataset} on {machine}: test accuracy per epoch", fontsize=10)
    for ax in (ax1, ax2):  # legends below the axes, never over the data
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic.write_bytes(path, buffer.getvalue())


def _bench_latency(bench: dict | None, model: str, variant: Variant) -> str:
    """Forward medians at batch 1 and 1000 from a benchmark JSON of the same machine, when it has this
    model + variant at the session's thread count."""
    if not bench:
        return "-"
    found = {
        r.identity.batch: r.median * 1e3
        for r in bench_rows(bench)
        if r.suite == "forward" and r.identity.model == model and r.variant == variant and not r.threads_pinned
    }
    return " / ".join(f"{found[k]:.2f}" if k in found else "-" for k in (1, 1000)) if found else "-"


def _baselines(groups: pd.DataFrame) -> pd.DataFrame:
    """The seed-recipe groups at the longest schedule, one per model (the one with most seeds)."""
    base = groups[groups.apply(_is_seed_recipe, axis=1)]
    if base.empty:
        return base
    base = base[base["epochs_cfg"] == base["epochs_cfg"].max()]
    return base.sort_values("n").groupby("model").tail(1)


def _conclusion_verdict(seed_style_diff: float, seed_style_noise: float | None, diff: float, noise: float | None) -> str:
    """Does the seed's "deeper is worse" survive? A seed-style gap within the seed-to-seed spread
    reproduces nothing; tell that apart from a real reproduction and from a reversal."""
    if seed_style_diff < 0 and seed_style_noise is not None and abs(seed_style_diff) <= 2 * seed_style_noise:
        reproduced = (
            "The seed's evaluation puts deep below simple here, but within the seed-to-seed spread: it reproduces nothing"
        )
    elif seed_style_diff < 0:
        reproduced = "The seed's evaluation reproduces its observation here, beyond the seed-to-seed spread"
    else:
        reproduced = "Even the seed's evaluation does not reproduce its observation on this dataset"
    if diff <= 0:
        return f"{reproduced}; correct evaluation does not favour deep in these runs."
    if noise is not None and diff <= 2 * noise:
        return f"{reproduced}; correct evaluation favours deep, but not beyond the seed-to-seed spread."
    return (
        f"{reproduced}; correct evaluation finds deep better beyond the seed-to-seed spread, so the conclusion does not survive."
    )


def _rerun_line(groups: pd.DataFrame) -> list[str]:
    """Retrained runs (`sweep --redo-contended`) measure how far one seed's accuracy moves between two
    runs of the same code: the noise floor under any gap in the table."""
    runs = pd.concat(list(groups["runs"]))
    again = runs.dropna(subset=["replaced_accuracy"])
    if again.empty:
        return []
    moved = (again["accuracy"] - again["replaced_accuracy"]).abs()
    identical = int((moved == 0).sum())
    elsewhere = int(again["replaced_elsewhere"].sum())
    where = f"{elsewhere} of them first ran on another machine" if elsewhere else "all on the same machine as before"
    return [
        f"- **Same seed, run again**: {plural(len(again), 'run')} {'was' if len(again) == 1 else 'were'} retrained after their first records had been timed on a "
        f"shared CPU ({where}; see `replaces` in each record). Their accuracy moved by {moved.mean():.4f} on average "
        f"(max {moved.max():.4f}; {identical} identical): "
        + (
            "gaps of that size between variants are noise."
            if identical < len(again)
            else "the training loop is reproducible here."
        )
    ]


def _accuracy_reading(pooled: pd.DataFrame) -> list[str]:
    """Which net is more accurate under the seed's recipe, is the gap real, and does the seed's
    conclusion survive: from the accuracies pooled over machines."""
    lines = []
    by_model = {row["model"]: row for _, row in _baselines(pooled).iterrows()}
    if {"simple", "deep"} <= set(by_model):
        s, d = by_model["simple"], by_model["deep"]
        diff = d["acc_mean"] - s["acc_mean"]
        noise = math.sqrt(s["acc_std"] ** 2 / s["n"] + d["acc_std"] ** 2 / d["n"]) if s["n"] > 1 and d["n"] > 1 else None
        verdict = (
            "cannot be weighed against seed-to-seed spread with a single seed per net"
            if noise is None
            else f"{'larger' if abs(diff) > 2 * noise else 'not larger'} than twice its standard error ({2 * noise:.4f}) from the seed-to-seed spread"
        )
        lines.append(
            f"- **Real accuracy, seed recipe**: deep {d['acc_mean']:.4f} vs simple {s['acc_mean']:.4f} "
            f"(n = {d['n']} and {s['n']} seeds): deep {'better' if diff > 0 else 'worse'} by {abs(diff):.4f}, which is {verdict}."
        )
        seed_diff = d["seed_style_mean"] - s["seed_style_mean"]
        seed_noise = (
            math.sqrt(s["seed_style_std"] ** 2 / s["n"] + d["seed_style_std"] ** 2 / d["n"])
            if s["n"] > 1 and d["n"] > 1
            else None
        )
        bug = {m: by_model[m]["acc_mean"] - by_model[m]["seed_style_mean"] for m in ("simple", "deep")}
        lines.append(
            f"- **The seed's evaluation bug** (raw 0..255 pixels into nets trained on [0, 1]): it costs simple "
            f"{bug['simple']:.4f} and deep {bug['deep']:.4f} of accuracy here (real minus seed-style, means over the same seeds)."
        )
        lines.append(
            f'- **The seed\'s conclusion** ("deeper is not always better" from deep {SEED_ACCURACY["deep"]} < simple '
            f"{SEED_ACCURACY['simple']}, one seed each, raw pixels): with the seed's evaluation here, deep "
            f"{d['seed_style_mean']:.4f} vs simple {s['seed_style_mean']:.4f} (a gap of {abs(seed_diff):.4f}"
            + (f"; twice its standard error from the seed-to-seed spread: {2 * seed_noise:.4f}" if seed_noise is not None else "")
            + f"); evaluated correctly, deep is {'better' if diff > 0 else 'worse'}. "
            + _conclusion_verdict(seed_diff, seed_noise, diff, noise)
        )
    return lines + _rerun_line(pooled)


def _cost_reading(groups: pd.DataFrame) -> list[str]:
    """What the time buys on one machine: deep against simple at equal cost, and the cheapest run."""
    lines = []
    base = _baselines(groups)
    by_model = {row["model"]: row for _, row in base.iterrows()}
    if {"simple", "deep"} <= set(by_model):
        s, d = by_model["simple"], by_model["deep"]
        reach = [_time_to(r, s["acc_mean"]) for _, r in d["runs"].iterrows()]
        reached = [t for t in reach if t is not None]
        if reached:
            lines.append(
                f"- **At equal cost**: simple needs {s['train_seconds']:.0f} s ({s['epochs_cfg']} epochs) for {s['acc_mean']:.4f}; deep "
                f"reaches that accuracy after {sum(reached) / len(reached):.0f} s on average ({len(reached)}/{len(reach)} seeds reach it), "
                f"so {'deep' if sum(reached) / len(reached) < s['train_seconds'] else 'simple'} is the better buy at that accuracy."
            )
        else:
            lines.append(
                f"- **At equal cost**: deep never reaches simple's final {s['acc_mean']:.4f} in these runs; simple is the better buy."
            )
    same_schedule = groups[groups["epochs_cfg"] == (base["epochs_cfg"].max() if not base.empty else groups["epochs_cfg"].max())]
    for model, g in same_schedule.groupby("model"):
        fastest = g.loc[g["train_seconds"].idxmin()]
        lines.append(
            f"- **Cheapest {model} training** over {plural(fastest['epochs_cfg'], 'epoch')}: {_label(fastest)}, {fastest['train_seconds']:.0f} s "
            f"for {fastest['acc_mean']:.4f} (n = {fastest['n']})."
        )
    return lines


def render(runs: list[RunRecord], problems: list[str], benches: dict[str, dict] | None, out_dir: Path, command: str) -> str:
    """The report; `benches`: a benchmark JSON per machine key, for the latency column of that
    machine's cost table (a JSON of another machine is never used)."""
    stopped = len(runs)
    runs = full_budget(runs)
    stopped -= len(runs)
    runs, trials = without_trials(runs)
    if not runs:
        return (
            f"# Accuracy versus cost\n\nNo run here trained its whole budget: the {plural(stopped, 'run')} stopped at a "
            "time-to-accuracy target, which each machine's `time-to-accuracy.md` scores.\n"
        )
    df = runs_frame(runs)
    benches = benches or {}
    machines = {r.machine_key: r.machine for r in runs}
    out = [header("Accuracy versus cost", list(machines.values()), df["dataset"].unique() if len(df) else [], command)]
    codes = Counter(r.machine.get("code") or "unknown" for r in runs)
    if len(codes) > 1:  # records made by several commits: name them all
        made = ", ".join(f"{code} ({plural(n, 'run')})" for code, n in codes.most_common())
        out.append(f"- **Runs made by code**: {md(made)}\n")
    out.append(
        "\nEvery figure comes from stored run records (`reports/machines/<machine>/runs/<dataset>/*.json`), made by "
        "`mnist-bench train` / `mnist-bench sweep`. Accuracy is on the test set with pixels scaled as in training; the "
        "seed-style column feeds raw 0..255 pixels, as the seed's script did. Accuracy pools over machines (a machine "
        "changes no result beyond rounding); every time is given per machine, under its own heading, and never "
        "compared across machines. Training time excludes the per-epoch evaluations. Datasets are reported "
        "separately and never averaged together.\n"
    )
    if trials:
        out.append(
            f"\n{plural(len(trials), 'run')} of the seed's recipe cut short (fewer than its {SEED_EPOCHS} epochs, beside "
            "full-length runs of the same net and variant) are left out: trial runs, not a recipe this report compares.\n"
        )
    if stopped:
        out.append(
            f"\n{plural(stopped, 'run')} stopped at a time-to-accuracy target are left out (their last accuracy is not their "
            "recipe's): each machine's `time-to-accuracy.md` scores them.\n"
        )
    dirty = sum(n for code, n in codes.items() if code.endswith("+dirty"))
    if dirty:
        out.append(
            f"\n_{dirty} of {len(runs)} runs were made by code with uncommitted edits (`+dirty` above"
            "): the commit named is where their code started, not exactly what ran. They stay because they can only "
            "be made again on the machine that made them._\n"
        )
    if problems:
        out.append("\n" + "\n".join(f"- WARNING: {md(p)}" for p in problems) + "\n")
    for dataset in sorted(df["dataset"].unique()):
        sub = df[df["dataset"] == dataset]
        counts = f"{sub['train_images'].iloc[0]:,} train / {sub['test_images'].iloc[0]:,} test images"
        out.append(f"\n## {dataset} ({counts})\n\n")
        if dataset == "synthetic":
            out.append("_synthetic data is random: its accuracies mean nothing and are not reported._\n")
            continue
        reading = _accuracy_reading(summarise_groups(sub, RECIPE_KEYS))
        if reading:  # the answer first, then the table it comes from
            out.append("### Reading (accuracy, all machines)\n\n" + "\n".join(reading) + "\n\n")
        out.append(_accuracy_table(sub))
        by_size = sub["machine_key"].value_counts()
        for key in by_size.index:  # the machine with most runs first
            out.append(_machine_section(sub[sub["machine_key"] == key], dataset, key, benches.get(key), out_dir))
    return "".join(out)


def machine_verdicts(runs: list[RunRecord]) -> list[str]:
    """One machine's answers per dataset, for the reports index: the seed recipe's accuracy per net
    (mean, spread, n), what deep costs against simple at equal accuracy, the cheapest training."""
    runs = full_budget(runs)
    if not runs:
        return []
    df = runs_frame(runs)
    lines = []
    for dataset in sorted(set(df["dataset"]) - {"synthetic"}):
        groups = summarise_groups(df[df["dataset"] == dataset])
        for _, b in _baselines(groups).sort_values("model", ascending=False).iterrows():
            lines.append(
                f"- {md(dataset)}, seed recipe, {md(b['model'])}: accuracy {b['acc_mean']:.4f} "
                f"(std {b['acc_std']:.4f}, n = {b['n']}) in {b['train_seconds']:.0f} s of training"
            )
        lines += [line.replace("- **", f"- {md(dataset)}: **", 1) for line in _cost_reading(groups)]
    return lines


def _machine_section(sub: pd.DataFrame, dataset: str, key: str, bench: dict | None, out_dir: Path) -> str:
    """Every cost figure of one machine's runs of one dataset, under a heading naming the machine."""
    groups = summarise_groups(sub)
    out = [f"\n### Cost on {md(key)}\n\n_{md(machine_label(sub['machine'].iloc[0]))}: {plural(len(sub), 'run')}._\n\n"]
    if groups["contended"].any():
        out.append(
            "_Runs marked * shared the CPU with other work (see `busy_before_start` and "
            "`cores_used_by_others_during_run` in their records): their times are upper bounds._\n\n"
        )
    out.append(_cost_table(groups, bench))
    out.append(
        "\nProcess peak MB is the whole training process's peak resident memory on CPU: torch itself, the dataset in "
        "memory and the evaluation, so it says what a run needs from the machine, not what the net costs (the simple net "
        "can read above the deep one). What one train step allocates is the step memory peak of the kernel report "
        "(`mnist-bench profile`). On CUDA it is the allocator's peak.\n"
    )
    base = _baselines(groups)
    targets = sorted({round(float(a), 4) for a in base["acc_mean"]})
    if targets:
        out.append(f"\n#### Time to reach an accuracy on {md(key)} (targets: the seed recipe's final accuracy per net)\n\n")
        rows = []
        for _, g in groups.iterrows():
            cells = []
            for target in targets:
                times = [_time_to(r, target) for _, r in g["runs"].iterrows()]
                hit = [t for t in times if t is not None]
                cells.append(f"{sum(hit) / len(hit):.0f} s ({len(hit)}/{len(times)})" if hit else f"not reached (0/{len(times)})")
            rows.append([_label(g), *cells])
        out.append(table(["model, loader, variant", *[f"≥ {t:.4f}" for t in targets]], rows))
        out.append(
            "\nMean training seconds to the first epoch whose test accuracy reaches the target (seeds reaching it / seeds).\n"
        )
    out.append(_seed_table(sub))
    png = out_dir / f"accuracy-vs-cost-{dataset}-{key}.png"
    plot(groups, dataset, key, png)
    out.append(f"\n#### Plot, {md(key)}\n\n![accuracy vs cost, {dataset}, {md(key)}]({png.name})\n")
    reading = _cost_reading(groups)
    if reading:
        out.append(f"\n#### Reading (cost on {md(key)})\n\n" + "\n".join(reading) + "\n")
    return "".join(out)


def _accuracy_table(sub: pd.DataFrame) -> str:
    """What a recipe buys, pooled over every machine and thread count that ran it."""
    pooled = sub.groupby(RECIPE_KEYS, sort=True)
    rows = []
    for _, g in pooled:
        first = g.iloc[0]
        std = g["accuracy"].std(ddof=1) if len(g) > 1 else 0.0
        per_machine = g["machine_key"].value_counts()
        rows.append(
            [
                _label(first),
                first["epochs_cfg"],
                f"{len(g)} ({', '.join(map(str, sorted(g['seed'])))})",
                f"{g['accuracy'].mean():.4f} ± {std:.4f}",
                f"{g['accuracy'].min():.4f}–{g['accuracy'].max():.4f}",
                f"{g['seed_style'].mean():.4f}",
                f"{first['params']:,}",
                f"{first['flops'] / 1e6:.2f} M",
                "; ".join(f"{md(k)}: {n}" for k, n in per_machine.items()),
            ]
        )
    return "### Accuracy (pooled over machines and thread counts)\n\n" + table(
        [
            "model, loader, variant",
            "epochs",
            "runs (seeds)",
            "accuracy mean ± std",
            "min–max",
            "seed-style",
            "params",
            "FLOPs / image",
            "runs per machine",
        ],
        rows,
        align="lrlrrrrrr",
    )


def _cost_table(groups: pd.DataFrame, bench: dict | None) -> str:
    """What a recipe costs on one machine, per thread count; `bench`: that machine's benchmark JSON."""
    rows = []
    for _, g in groups.iterrows():
        rows.append(
            [
                f"{_label(g)}{'*' if g['contended'] else ''}",
                g["threads"],
                g["n"],
                f"{g['sec_per_epoch']:.1f}",
                f"{g['train_seconds']:.0f}",
                f"{fmt_num(g['lat1_ms'], 2)} / {fmt_num(g['lat1000_ms'], 1)}",
                _bench_latency(bench, g["model"], g["variant"]),
                fmt_num(g["peak_mb"], 0),
            ]
        )
    columns = [
        "model, loader, variant",
        "threads",
        "runs",
        "s / epoch",
        "train s",
        "latency b1 / b1000 ms (run)",
        "bench b1 / b1000 ms",
        "process peak MB",
    ]
    return table(columns, rows, align="lrrrrrrr")


def _seed_table(sub: pd.DataFrame) -> str:
    """The seed's own table beside ours: seed recipe, seed 777, per-epoch cost, both accuracies."""
    ours = {
        r["model"]: r for _, r in sub.iterrows() if _is_seed_recipe(r) and r["seed"] == SEED and r["epochs_cfg"] == SEED_EPOCHS
    }
    if not ours:
        return ""
    models = [m for m in ("simple", "deep") if m in ours]
    rows = []
    for epoch in range(SEED_EPOCHS):
        row = [epoch + 1]
        for m in models:
            row += [f"{SEED_COSTS[m][epoch]:.9g}", f"{ours[m]['costs'][epoch]:.9g}", f"{ours[m]['curve'][epoch]:.4f}"]
        rows.append(row)
    rows.append(["seed-style acc"] + sum(([f"{SEED_ACCURACY[m]}", f"{ours[m]['seed_style']:.4f}", ""] for m in models), []))
    rows.append(["real acc"] + sum((["(not measured)", f"{ours[m]['accuracy']:.4f}", ""] for m in models), []))
    columns = ["epoch"] + sum(([f"{m}: seed's cost (MNIST)", f"{m}: our cost", f"{m}: our test acc"] for m in models), [])
    return (
        "\n#### The seed's table, reproduced (seed recipe, seed 777, 15 epochs)\n\n"
        "The seed's costs were printed on MNIST on a machine it does not name; ours are on this dataset. The seed's accuracies "
        "come from raw 0..255 test pixels; the matching figure here is the seed-style row.\n\n" + table(columns, rows)
    )
