"""``scalefirst report <job dir> ...``: the UCR chapter's production figures from daily jobs' ``history.jsonl``.

Writes into ``--out``:

* ``model_size.png``: parameters (allocated and in use) and ids in use per table over days (fig. 3.2);
* ``relative_nce.png``: NCE of each day's model on the first rows of the next day, relative to the baseline job's
  (ICR if present, else the first given) NCE on its first evaluated day, in % (figs. 3.3 and 3.4);
* ``nce_by_segment.png``: NCE per activeness segment on the last evaluated day, minus the baseline's (fig. 3.5);
* ``frozen_decay.png``: NCE of each day's model over time windows of the following day, averaged over days and
  relative to the first window (fig. 3.6: how fast a model that is not retrained decays);
* ``summary.md``: relative NCE change per task vs the baseline at chosen days, the shape of table 3.2, plus sizes.

A day's line is the model trained through that day; "eval day" is the day after, which the numbers are about.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TABLE_DAYS = (7, 14, 30, 60)


def load_job(job_dir: str | Path) -> dict[str, Any]:
    path = Path(job_dir) / "history.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no history (not a daily job directory, or no day committed yet)")
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    return {"name": lines[0]["formulation"], "dir": str(job_dir), "days": lines}


def _label(job: dict[str, Any], names: list[str]) -> str:
    return job["name"] if names.count(job["name"]) == 1 else f"{job['name']} ({Path(job['dir']).name})"


def _evaluated(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in job["days"] if d.get("eval")]


def _nce(day: dict[str, Any], task: str | None = None) -> float:
    ev = day["eval"]
    return ev["tasks"][task or ev["main_task"]]["nce"]


def _rel(x: float, base: float) -> float:
    return 100.0 * (x / base - 1.0) if base and math.isfinite(base) else float("nan")


def write_report(job_dirs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Write the figures and summary.md for ``job_dirs`` into ``out``; returns what the summary holds."""
    jobs = [load_job(d) for d in job_dirs]
    names = [j["name"] for j in jobs]
    labels = [_label(j, names) for j in jobs]
    base = next((j for j in jobs if j["name"] == "icr"), jobs[0])
    base_label = labels[jobs.index(base)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_eval = _evaluated(base)
    base_first = _nce(base_eval[0]) if base_eval else float("nan")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for job, label in zip(jobs, labels, strict=True):
        x = [d["day_index"] + 1 for d in job["days"]]
        axes[0].plot(x, [d["params"]["total"] / 1e6 for d in job["days"]], marker=".", label=f"{label} allocated")
        axes[0].plot(x, [d["params"]["in_use"] / 1e6 for d in job["days"]], ls="--", label=f"{label} in use")
        for table in job["days"][0]["ids"]:
            axes[1].plot(x, [d["ids"][table]["rows_in_use"] for d in job["days"]], marker=".",
                         label=f"{label}: {table} rows in use")  # fmt: skip
    axes[0].set(xlabel="day", ylabel="parameters (M)", title="Model size over days (fig. 3.2)")
    axes[1].set(xlabel="day", ylabel="embedding rows in use", title="Ids in use per table")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "model_size.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for job, label in zip(jobs, labels, strict=True):
        ev = _evaluated(job)
        ax.plot([d["day_index"] + 1 for d in ev], [_rel(_nce(d), base_first) for d in ev], marker=".", label=label)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="day (model trained through it; evaluated on the next day)", ylabel="relative NCE (%)",
           title=f"NCE vs {base_label} on its first day (figs. 3.3/3.4; lower is better)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "relative_nce.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    segments: dict[str, dict[str, float]] = {}
    last_base = base_eval[-1] if base_eval else None
    width = 0.8 / max(1, len(jobs) - 1)
    k = 0
    for job, label in zip(jobs, labels, strict=True):
        ev = _evaluated(job)
        if not ev or last_base is None:
            continue
        main = ev[-1]["eval"]["main_task"]
        seg, bseg = ev[-1]["eval"]["segments"], last_base["eval"]["segments"]
        segments[label] = {s: seg[s][main] for s in seg}
        if job is base:
            continue
        xs = sorted(seg, key=int)
        ax.bar([int(s) + k * width for s in xs], [_rel(seg[s][main], bseg[s][main]) for s in xs], width, label=label)
        k += 1
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="activeness segment (0 = least active)", ylabel=f"NCE vs {base_label} (%)",
           title="NCE by user activeness, last evaluated day (fig. 3.5)")  # fmt: skip
    ax.grid(alpha=0.3, axis="y")
    if k:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "nce_by_segment.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    decay: dict[str, list[float]] = {}
    for job, label in zip(jobs, labels, strict=True):
        runs = [d["eval"]["windows"] for d in _evaluated(job) if d["eval"].get("windows")]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        rel = [sum(_rel(r[w]["nce"], r[0]["nce"]) for r in runs) / len(runs) for w in range(n)]
        hours = [0.5 * sum(runs[0][w]["hours"]) for w in range(n)]
        decay[label] = rel
        ax.plot(hours, rel, marker="o", label=label)
    ax.set(xlabel="hours into the next day", ylabel="NCE vs first window (%)",
           title="A frozen model over the following day (fig. 3.6)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frozen_decay.png", dpi=120)
    plt.close(fig)

    summary = _summary_table(jobs, labels, base, base_label)
    summary["segments_last_day"] = segments
    summary["frozen_decay_pct"] = decay
    (out / "summary.md").write_text(summary.pop("markdown"))
    return summary


def _summary_table(jobs: list[dict], labels: list[str], base: dict, base_label: str) -> dict[str, Any]:
    """Relative NCE (%) per task vs the baseline at the table days (the baseline's first table day is "-")."""
    n_days = max(len(j["days"]) for j in jobs)
    days = [d for d in TABLE_DAYS if d < n_days] + [n_days - 1]
    days = sorted(set(d for d in days if d >= 1))
    by_day = [{d["day_index"] + 1: d for d in _evaluated(j)} for j in jobs]
    base_days = by_day[jobs.index(base)]
    ref_day = next((d for d in days if d in base_days), None)
    tasks = list(base["days"][0]["eval"]["tasks"]) if base["days"][0].get("eval") else []
    head = ["task"] + [f"day {d} {lab}" for d in days for lab in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for task in tasks:
        ref = _nce(base_days[ref_day], task) if ref_day else float("nan")
        cells = [task]
        for d in days:
            for lab, days_of in zip(labels, by_day, strict=True):
                if d not in days_of:
                    cells.append("")
                    continue
                if days_of is base_days and d == ref_day:
                    cells.append("-")
                    continue
                value = _rel(_nce(days_of[d], task), ref)
                table.setdefault(task, {}).setdefault(f"day{d}", {})[lab] = value
                cells.append(f"{value:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    size = ["", "| job | days | params first | params last | last / first | item rows in use last | user rows in use last |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for job, lab in zip(jobs, labels, strict=True):
        first, last = job["days"][0], job["days"][-1]
        rows = {t: last["ids"][t]["rows_in_use"] for t in last["ids"]}
        size.append(f"| {lab} | {len(job['days'])} | {first['params']['total']:,} | {last['params']['total']:,} | "
                    f"{last['params']['total'] / first['params']['total']:.2f} | {rows.get('item', '')} | "
                    f"{rows.get('user', '')} |")  # fmt: skip
    text = (f"Relative NCE change (%) on the next day's first rows vs {base_label} at day {ref_day} (\"-\"); lower is "
            "better. Day d = the model trained through day d.\n\n" + "\n".join(lines) + "\n" + "\n".join(size) + "\n")  # fmt: skip
    return {"markdown": text, "baseline": base_label, "reference_day": ref_day, "relative_nce_pct": table}
