"""`scalefirst report`: figures and the table 3.2-shaped summary from daily jobs' history.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.jobs.report import write_report


def day_metrics(formulation: str, day: int, nce: float, rows: dict[str, int], evaluated: bool = True) -> dict:
    ev = None
    if evaluated:
        ev = {
            "day": f"2026-01-{day + 2:02d}",
            "main_task": "click",
            "rows": 100,
            "tasks": {"click": {"nce": nce, "auc": 0.6}, "like": {"nce": nce + 0.05, "auc": 0.6}},
            "segments": {str(s): {"rows": 20, "click": nce + 0.01 * s, "like": nce} for s in range(5)},
            "windows": [
                {"hours": [4 * w, 4 * w + 4], "rows": 10, "nce": nce * (1 + 0.01 * w), "auc": 0.6} for w in range(6)
            ],  # fmt: skip
        }
    dim = 8
    return {
        "day": f"2026-01-{day + 1:02d}",
        "day_index": day,
        "formulation": formulation,
        "ids": {t: {"rows_in_use": n, "rows": n + 1} for t, n in rows.items()},
        "params": {"total": 1000 + dim * sum(rows.values()), "in_use": 1000 + dim * sum(rows.values()), "dense": 1000},
        "eval": ev,
    }


def write_job(root: Path, name: str, lines: list[dict]) -> Path:
    job = root / name
    job.mkdir()
    (job / "history.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return job


def test_report_figures_and_relative_nce(tmp_path: Path) -> None:
    icr = write_job(tmp_path, "icr", [day_metrics("icr", d, 1.0 - 0.01 * d, {"item": 100 * (d + 1)}, d < 7)
                                      for d in range(8)])  # fmt: skip
    ucr = write_job(tmp_path, "ucr", [day_metrics("ucr", d, 0.9 - 0.01 * d, {"user": 50}, d < 7) for d in range(8)])
    summary = write_report([ucr, icr], tmp_path / "out")
    for png in ("model_size.png", "relative_nce.png", "nce_by_segment.png", "frozen_decay.png"):
        assert (tmp_path / "out" / png).stat().st_size > 10_000, png
    assert summary["baseline"] == "icr" and summary["reference_day"] == 7  # ICR is the baseline even if given 2nd
    rel = summary["relative_nce_pct"]["click"]
    # day 7 = day_index 6: ICR 0.94 ("-"), UCR 0.84 -> -10.64 %
    assert rel["day7"]["ucr"] == pytest.approx(100 * (0.84 / 0.94 - 1))
    assert "icr" not in rel["day7"]  # the baseline cell
    assert summary["frozen_decay_pct"]["ucr"][-1] == pytest.approx(5.0)  # +1 % per window
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| click |" in md and "-10.64" in md and "| icr | 8 | 1,800 | 7,400 | 4.11 | 800 |" in md


def test_report_names_a_directory_without_history(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no history"):
        write_report([tmp_path], tmp_path / "out")
