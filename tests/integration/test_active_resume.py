"""``scalefirst al`` killed (SIGKILL) after a round resumes at the next one and selects exactly what an
uninterrupted run selects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE = ["loop.rounds=3", "loop.seeds=[0]", "loop.strategies=[badge,dao]", "fit.steps=20", "dao.params=head"]


def _al(run_dir: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SCALEFIRST_FAULT"}
    if fault:
        env["SCALEFIRST_FAULT"] = fault
    cmd = [sys.executable, "-m", "launch.cli", "al", "--config", "configs/active/digits.yaml", *BASE,
           f"loop.run_dir={run_dir}"]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _curves(run_dir: Path) -> dict[str, dict]:
    return {s: json.loads((run_dir / s / "seed0.json").read_text()) for s in ("badge", "dao")}


def test_killed_after_a_round_resumes_with_identical_selections(tmp_path: Path) -> None:
    straight = _al(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = _al(tmp_path / "killed", fault="kill_after_round=dao:0:1")
    assert killed.returncode != 0
    partial = json.loads((tmp_path / "killed" / "dao" / "seed0.json").read_text())
    assert [r["round"] for r in partial["rounds"]] == [0, 1]  # badge finished, dao died after its round 1
    assert not (tmp_path / "killed" / "summary.json").exists()

    resumed = _al(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # It continued: only dao's rounds 2 and 3 ran again (a restart from scratch would also reproduce the curves).
    log = resumed.stdout + resumed.stderr
    assert "dao seed 0 round 2:" in log and "dao seed 0 round 3:" in log
    assert "dao seed 0 round 1:" not in log and "badge seed 0 round" not in log
    a, b = _curves(tmp_path / "straight"), _curves(tmp_path / "killed")
    for s in a:
        assert [r["round"] for r in b[s]["rounds"]] == [0, 1, 2, 3]
        assert [r.get("selected") for r in b[s]["rounds"]] == [r.get("selected") for r in a[s]["rounds"]]
        assert [r["accuracy"] for r in b[s]["rounds"]] == [r["accuracy"] for r in a[s]["rounds"]]
        assert b[s]["labeled"] == a[s]["labeled"] and len(set(a[s]["labeled"])) == 40
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["dao"]["labels"] == [10, 20, 30, 40]
