"""``scalefirst train`` through torchrun (2 gloo ranks, 3 steps): a short console, the full log in log.txt.

Third-party INFO (TorchRec planner statistics, fbgemm loader lines) and known FutureWarnings reach
``<run_dir>/log.txt`` from both ranks but not the console; ``--verbose`` puts them back on the console.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ranking" / "demo.yaml"
OVERRIDES = [
    "model.formulation=ucr",
    "data.synthetic.num_events=3000",
    "data.synthetic.num_users=300",
    "data.synthetic.num_items=200",
    "train.max_steps=3",
    "train.eval_max_examples=500",
    "train.progress=false",
    "train.tensorboard=false",
]
THIRD_PARTY = ["torchrec.distributed.planner.stats", "Successfully loaded", "FutureWarning"]


def scalefirst_train(run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch.cli", "train", "--nproc", "2", "--config", str(CONFIG), *flags,
           *OVERRIDES, f"train.run_dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_console_is_short_and_log_txt_has_everything(tmp_path: Path) -> None:
    proc = scalefirst_train(tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-4000:]
    console = proc.stdout + proc.stderr
    assert "framework.distributed.torchrec_sharding: sharding plan: user " in console
    assert "framework.trainers.ranking: test: " in console
    for noise in THIRD_PARTY:
        assert noise not in console, console
    assert len(console.splitlines()) <= 12, console

    log = (tmp_path / "run" / "log.txt").read_text()
    for line in [*THIRD_PARTY, "py.warnings", "sharding plan in full", "framework.trainers.ranking: test: "]:
        assert line in log
    assert "[rank0] " in log and "[rank1] " in log


@pytest.mark.slow
def test_verbose_shows_third_party_logs(tmp_path: Path) -> None:
    proc = scalefirst_train(tmp_path / "run", "--verbose")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for noise in THIRD_PARTY:
        assert noise in proc.stderr


def test_launch_train_config_error_is_one_line_exit_2(tmp_path: Path) -> None:
    # torchrun's workers validate too (multi-node launches skip the CLI): one line per job, not a traceback.
    cmd = [sys.executable, "-m", "launch.train", "--config", str(CONFIG), "model.embeding_dim=8"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "ConfigError: unknown key 'model.embeding_dim' (from <command line>)"
    )
