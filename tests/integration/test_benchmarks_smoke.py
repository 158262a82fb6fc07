"""Smoke test of benchmarks/ranking_throughput.py: a --quick run end to end (torchrun with 2 ranks + plain baseline)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ranking_throughput_quick(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    cmd = [sys.executable, "benchmarks/ranking_throughput.py", "--quick", "--formulations", "ucr", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads(out.read_text())
    row = result["formulations"]["ucr"]
    assert row["sharded_examples_per_s"] > 0
    assert row["plain_examples_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["sharded_examples_per_s"] / row["plain_examples_per_s"])
    assert row["global_batch"] == 2 * 1024  # train.global_batch_size of configs/ranking/din_throughput.yaml
    assert row["plan"]["user"]["sharding_type"] == "table_wise"
    assert {"date", "device", "torch", "git_commit", "command", "method", "goals"} <= result.keys()


def test_clip_loader_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    cmd = [sys.executable, "benchmarks/clip_loader.py", "--num-images", "96", "--samples-per-shard", "24",
           "--source-size", "64x48", "--image-size", "32", "--batch-size", "8", "--shuffle-buffer", "16",
           "--workers", "0", "2", "--warmup", "1", "--batches", "4", "--repeats", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["images_per_s"]) == {"0", "2"} and all(v > 0 for v in result["images_per_s"].values())
    assert result["data"]["num_images"] == 96 and {"env", "git_commit", "date"} <= result.keys()


@pytest.mark.slow
def test_ranking_movielens_tune_then_run(ml100k_dir: Path, tmp_path: Path) -> None:
    """Both modes end to end on one cell (tiny lists, 1 epoch, 1 rank): the tuned settings reach the run, and the
    summary has the documented shape."""
    small = ["data.max_item_hist=4", "data.max_user_hist=4", "train.eval_batch_size=4096"]
    common = ["--data", str(ml100k_dir), "--protocols", "user", "--formulations", "icr", "--run-root",
              str(tmp_path / "runs"), *small]  # fmt: skip
    tune = [sys.executable, "benchmarks/ranking_movielens.py", "tune", "--max-epochs", "1", "--out",
            str(tmp_path / "tune.json"), *common]  # fmt: skip
    proc = subprocess.run(tune, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tuning = json.loads((tmp_path / "tune.json").read_text())
    best = tuning["best"]["user"]["icr"]
    assert best["epochs"] == 1 and 0.5 < best["val_auc"] < 1.0
    assert all(r["config"]["data"]["holdout"] == "validation" for r in tuning["runs"])
    run = [sys.executable, "benchmarks/ranking_movielens.py", "run", "--seeds", "0", "--nproc", "1", "--tuning",
           str(tmp_path / "tune.json"), "--out", str(tmp_path / "run.json"), *common]  # fmt: skip
    proc = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "run.json").read_text())
    s = result["summary"]["user"]
    assert {"auc_mean", "auc_std", "nce_mean"} <= s["icr"].keys() and "auc" in s["item_rate"] and "auc" in s["logreg"]
    (r,) = result["runs"]
    assert (
        r["config"]["data"]["holdout"] == "test"
        and r["config"]["model"]["embedding_dim"] == best["point"]["model.embedding_dim"]
    )
    assert "| ICR |" in proc.stdout and "logistic regression" in proc.stdout


def test_log_io_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "log_io.json"
    cmd = [sys.executable, "benchmarks/log_io.py", "--events-per-day", "50000", "--num-users", "2000",
           "--new-items-per-day", "500", "--parts-per-day", "2", "--read-repeats", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["generator"]["events"] == 50000 and result["reader"]["rows"] == 50000
    assert result["reader"]["rows_per_s"] > 0 and {"git_commit", "device", "env", "command"} <= result.keys()


@pytest.mark.slow
def test_daily_growth_benchmark_quick(tmp_path: Path) -> None:
    out, figures = tmp_path / "daily.json", tmp_path / "figures"
    cmd = [sys.executable, "benchmarks/daily_growth.py", "--days", "3", "--events-per-day", "6000", "--num-users",
           "500", "--new-items-per-day", "100", "--jobs", "icr", "ucr", "--loader-steps", "2", "--out", str(out),
           "--figures", str(figures), "train.eval_examples=1000", "train.global_batch_size=512"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary["days"] == 3 and summary["icr_params_last_over_first"] > 1.0
    assert set(summary["nce_last_day"]) == {"icr", "ucr"} and summary["loader_over_in_memory"] > 0
    assert {p.name for p in figures.glob("*.png")} == {"model_size.png", "relative_nce.png", "nce_by_segment.png",
                                                      "frozen_decay.png"}  # fmt: skip


def test_active_learning_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "al.json"
    cmd = [sys.executable, "benchmarks/active_learning.py", "--protocols", "digits", "--seeds", "2", "--rounds", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    s = result["summary"]
    assert set(s) == {"labels", "accuracy_mean", "dao_minus_random", "dao_minus_entropy", "p_value_dao_vs_random"}
    assert s["labels"] == [10, 20] and s["p_value_dao_vs_random"][0] is None  # round 0: the same initial labels
    assert {"random", "entropy", "bald", "coreset", "badge", "dao", "dao_topk", "dao_softmax"} <= set(
        s["accuracy_mean"]
    )
    assert all(0 < a <= 1 for v in s["accuracy_mean"].values() for a in v)
    assert (out.with_suffix("") / "digits_vs_random.png").stat().st_size > 1000


def test_active_learning_multimodal_cold_start_quick(tmp_path: Path) -> None:
    out = tmp_path / "al_mm.json"
    cmd = [sys.executable, "benchmarks/active_learning.py", "--protocols", "multimodal", "--seeds", "2", "--rounds",
           "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mm = json.loads(out.read_text())["protocols"]["multimodal"]
    cold = mm["cold_start"]
    assert set(cold) == {"random", "mmcsal", "mmcsal_kmeans"}
    for name in ("mmcsal", "mmcsal_kmeans"):
        assert 1 <= cold[name]["classes_covered_mean"] <= 10 and cold[name]["cold_start_seconds_mean"] > 0
        assert set(cold[name]["strategies"]) == {"random", "bmmal"}
        assert len(cold[name]["random_minus_random_init"]["mean"]) == 2
    assert set(mm["strategies"]["bmmal"]["per_modality_mean"]) == {"m1", "m2", "mm"}
    assert (out.with_suffix("") / "multimodal_cold_start.png").stat().st_size > 1000


def test_active_ablations_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "abl.json"
    cmd = [sys.executable, "benchmarks/active_ablations.py", "--seeds", "2", "--episodes", "2", "--rounds", "1",
           "--draws", "100", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    approx = result["approximation"]
    assert {"none", "influence_all_damping1", "influence_head_damping1", "sgd_step_lr1", "retrain_other_seed"} <= set(
        approx
    )
    assert approx["none"]["prediction_mse"] > 0
    est = result["estimator"]
    # LURE with DAO's proposal on f's own loss: the proposal is proportional to the loss, a zero-variance estimate.
    assert est["at_f"]["lure_16"]["relative_rmse"] < 1e-9 < est["at_f"]["uniform_16"]["relative_rmse"]
    assert est["other_model"]["proposal_plain_mean_16"]["relative_bias"] > 0.1  # the uncorrected mean is biased
    curves = result["loss_estimate_curves"]["strategies"]
    assert set(curves) == {"random", "dao_lure_16", "dao_uniform_16", "dao_uniform_256"}


def test_active_dao_scaling_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    cmd = [sys.executable, "benchmarks/active_dao_scaling.py", "--sizes", "150,300", "--all-sizes", "20", "--out",
           str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["params"], r["candidates"]) for r in rows] == [("head", 150), ("head", 300), ("all", 20)]
    for r in rows:
        assert r["w1"]["candidates_per_s"] > 0 and r["w2"]["same_scores_as_w1"] and r["speedup_w2_vs_w1"] > 0
