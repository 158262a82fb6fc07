"""DAO ablations of thesis §2.6 on the real digits (issue 10): the parameter update and the loss estimate.

    .venv/bin/python benchmarks/active_ablations.py
    .venv/bin/python benchmarks/active_ablations.py --seeds 2 --episodes 3 --rounds 2 --out /tmp/abl.json   # smoke

1. ``approximation`` (fig. 2.5a): from 100 random labels, 25 episodes each adding one random labeled point (no AL
   strategy, as in the thesis). Each episode compares the model "updated" without retraining (no update at all;
   the influence update on all parameters or on the head, damping 1 and 0.1; one SGD step of several sizes) with
   the model fully retrained on the grown set (eq. 2.3; the same initialization and optimizer seed, so only the
   data differ): the squared difference of test accuracy (the thesis' metric) and of test predictions. A second
   full retraining with other seeds gives the noise floor of "full retraining" itself.
2. ``estimator``: at a real round (20 labels, f and the surrogate trained as the loop does) the pool's mean
   expected loss estimated from 16 points by LURE with DAO's proposal, by a uniform sample of 16 and of 256, and by
   the plain mean of 16 proposal-drawn points (biased): bias, std and RMSE over 2,000 draws.
3. ``loss_estimate_curves`` (fig. 2.5b): the digits protocol with DAO's estimate as LURE (16), uniform (16) and
   uniform (256), 5 seeds, with DAO's scoring time per round.
Top-k vs soft-rank vs soft-max (fig. 2.6) are the ``dao_topk`` / ``dao`` / ``dao_softmax`` curves of
benchmarks/active_learning.py. Writes benchmarks/results/active_ablations.json and figures beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call  # noqa: E402
from tqdm import tqdm  # noqa: E402

from framework.active.dao import DAOConfig, updated_parameters  # noqa: E402
from framework.active.data import digits_pool  # noqa: E402
from framework.active.loop import initial_labels, run, summarize  # noqa: E402
from framework.active.lure import lure_estimate, sample_proposal  # noqa: E402
from framework.active.models import build_model  # noqa: E402
from framework.active.report import paired_difference, plot_curves  # noqa: E402
from framework.active.train import FitConfig, fit, predict_probs  # noqa: E402
from framework.config import load_job_config  # noqa: E402
from framework.trainers.common import check_results_or_exit, result_header, write_result  # noqa: E402

UPDATES: dict[str, DAOConfig | None] = {
    "none": None,
    "influence_all_damping1": DAOConfig(params="all", damping=1.0),
    "influence_all_damping0.1": DAOConfig(params="all", damping=0.1),
    "influence_head_damping1": DAOConfig(params="head", damping=1.0),
    **{f"sgd_step_lr{lr:g}": DAOConfig(params="all", update="sgd_step", sgd_lr=lr) for lr in (1.0, 10.0, 100.0)},
}


def _trained(pool, labeled: torch.Tensor, arch: str, seed: int, fit_cfg: FitConfig):
    torch.manual_seed(seed)
    model = build_model(arch, tuple(tuple(x.shape[1:]) for x in pool.x), pool.num_classes)
    return fit(model, tuple(x[labeled] for x in pool.x), pool.y[labeled], fit_cfg, seed=seed + 1)


def _distances(p_a: torch.Tensor, p_b: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(squared difference of test accuracy, mean squared difference of predicted probabilities)."""
    acc = lambda p: float((p.argmax(1) == y).double().mean())  # noqa: E731
    return (acc(p_a) - acc(p_b)) ** 2, float(((p_a - p_b) ** 2).sum(1).mean())


def approximation(seeds: int, episodes: int, initial: int, fit_cfg: FitConfig) -> dict[str, Any]:
    pool = digits_pool()
    x_test = tuple(x.double() for x in pool.x_test)
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in [*UPDATES, "retrain_other_seed"]}
    seconds: dict[str, list[float]] = {k: [] for k in UPDATES}
    bar = tqdm(total=seeds * episodes, desc="approximation", leave=False)
    for seed in range(seeds):
        labeled = initial_labels(pool, initial, seed)
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(10_000 + seed))
        taken = set(labeled.tolist())
        fresh = [int(i) for i in order if int(i) not in taken][:episodes]
        model = _trained(pool, labeled, "cnn", 7, fit_cfg)
        for e, z in enumerate(fresh):
            grown = torch.cat([labeled, torch.tensor([z])])
            full = _trained(pool, grown, "cnn", 7, fit_cfg)  # same seeds: only the added point differs
            p_full = predict_probs(full, pool.x_test).double()
            other = _trained(pool, grown, "cnn", 1_000 + 31 * seed + e, fit_cfg)
            rows["retrain_other_seed"].append(_distances(predict_probs(other, pool.x_test).double(), p_full,
                                                         pool.y_test))  # fmt: skip
            x_L, y_L = tuple(x[labeled] for x in pool.x), pool.y[labeled]
            for name, cfg in UPDATES.items():
                t0 = time.perf_counter()
                if cfg is None:
                    p = predict_probs(model, pool.x_test).double()
                else:
                    target = F.one_hot(pool.y[z : z + 1], pool.num_classes)
                    f, params = updated_parameters(model, x_L, y_L, tuple(x[z : z + 1] for x in pool.x), target,
                                                   cfg, seed=100 * seed + e)  # fmt: skip
                    with torch.no_grad():
                        p = torch.softmax(functional_call(f, params[0], x_test), dim=1)
                seconds[name].append(time.perf_counter() - t0)
                rows[name].append(_distances(p, p_full, pool.y_test))
            labeled, model = grown, full
            bar.update()
    bar.close()
    out: dict[str, Any] = {"seeds": seeds, "episodes": episodes, "initial": initial}
    for name, vals in rows.items():
        a = np.array(vals)
        out[name] = {
            "accuracy_mse": float(a[:, 0].mean()), "accuracy_se_median": float(np.median(a[:, 0])),
            "accuracy_se_std": float(a[:, 0].std()), "prediction_mse": float(a[:, 1].mean()),
            "prediction_se_median": float(np.median(a[:, 1])), "prediction_se_std": float(a[:, 1].std()),
        }  # fmt: skip
        if name in seconds:
            out[name]["seconds_per_update"] = float(np.mean(seconds[name]))
    return out


def estimator(seeds: int, draws: int, labels: int, fit_cfg: FitConfig) -> dict[str, Any]:
    """Bias / std / RMSE of pool-mean-loss estimates (relative to the exact mean) at a real round, for two losses:
    f's own (``at_f``: the proposal is then proportional to the very loss, LURE's zero-variance case) and that of
    a different model, f retrained with 10 more random labels (``other_model``: a change far larger than any DAO
    step, the proposal still f's)."""
    pool = digits_pool()
    methods = ("lure_16", "uniform_16", "uniform_256", "proposal_plain_mean_16")
    errors: dict[str, dict[str, list[np.ndarray]]] = {c: {m: [] for m in methods} for c in ("at_f", "other_model")}
    for seed in range(seeds):
        labeled = initial_labels(pool, labels + 10, seed)
        mask = torch.ones(len(pool), dtype=torch.bool)
        mask[labeled] = False
        x_U = tuple(x[mask] for x in pool.x)
        f = _trained(pool, labeled[:labels], "cnn", 11 + seed, fit_cfg)
        pi = _trained(pool, labeled[:labels], "mlp", 21 + seed, fit_cfg)
        other = _trained(pool, labeled, "cnn", 31 + seed, fit_cfg)
        p_pi = predict_probs(pi, x_U).double()
        ce = {name: -(p_pi * torch.log(predict_probs(m, x_U).double().clamp_min(1e-30))).sum(1)
              for name, m in (("at_f", f), ("other_model", other))}  # fmt: skip
        proposal = ce["at_f"]  # DAO's q: expected CE of the surrogate against f
        N = proposal.numel()
        g = torch.Generator().manual_seed(seed)
        idx, q = sample_proposal(proposal.expand(draws, N), 16, g)
        uniform = {n: sample_proposal(torch.ones(draws, N, dtype=torch.float64), n, g)[0] for n in (16, 256)}
        for case, loss_N in ce.items():
            true = float(loss_N.mean())
            err = errors[case]
            err["lure_16"].append((lure_estimate(loss_N[idx], q, N) - true).numpy() / true)
            err["proposal_plain_mean_16"].append((loss_N[idx].mean(1) - true).numpy() / true)
            for n, u_idx in uniform.items():
                err[f"uniform_{n}"].append((loss_N[u_idx].mean(1) - true).numpy() / true)
    out: dict[str, Any] = {"seeds": seeds, "draws": draws, "labels": labels}
    for case, by_method in errors.items():
        out[case] = {}
        for m, errs in by_method.items():
            e = np.concatenate(errs)
            out[case][m] = {"relative_bias": float(e.mean()), "relative_std": float(e.std()),
                            "relative_rmse": float(np.sqrt((e**2).mean()))}  # fmt: skip
    return out


def loss_estimate_curves(seeds: int, rounds: int, fig: Path) -> dict[str, Any]:
    variants = {"lure_16": [], "uniform_16": ["dao.proposal=uniform"],
                "uniform_256": ["dao.proposal=uniform", "dao.n_c=256"]}  # fmt: skip
    common = [f"loop.seeds=[{','.join(str(s) for s in range(seeds))}]", f"loop.rounds={rounds}", "dao.params=head"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(variants.items()):
            strategies = "[random,dao]" if i == 0 else "[dao]"
            cfg = load_job_config(
                REPO / "configs" / "active" / "digits.yaml",
                [*common, *extra, f"loop.strategies={strategies}", f"loop.run_dir={tmp}/{name}"],
            )
            res = run(cfg)  # fmt: skip
            if i == 0:
                results["random"] = res["random"]
            results[f"dao_{name}"] = res["dao"]
    plot_curves(results, fig, "digits: DAO's loss estimate, LURE vs uniform (mean ± std over seeds)")
    out: dict[str, Any] = {"strategies": summarize(results)}
    for name in ("dao_uniform_16", "dao_uniform_256", "random"):
        out[f"dao_lure_16_minus_{name}"] = paired_difference(results["dao_lure_16"], results[name])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "active_ablations.json"))
    p.add_argument("--seeds", type=int, default=5, help="seeds of the curves and the estimator (3 at most for 1.)")
    p.add_argument("--episodes", type=int, default=25)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--draws", type=int, default=2000)
    args = p.parse_args(argv)
    check_results_or_exit(p, args.out)
    torch.set_num_threads(1)
    out_path = Path(args.out)
    fit_cfg = FitConfig()
    result = result_header("active_ablations")
    t0 = time.perf_counter()
    result["approximation"] = approximation(min(3, args.seeds), args.episodes, 100, fit_cfg)
    print(f"[ablations] approximation done ({time.perf_counter() - t0:.0f} s)", flush=True)
    result["estimator"] = estimator(args.seeds, args.draws, 20, fit_cfg)
    print(f"[ablations] estimator done ({time.perf_counter() - t0:.0f} s)", flush=True)
    result["loss_estimate_curves"] = loss_estimate_curves(
        args.seeds, args.rounds, out_path.with_suffix("") / "loss_estimate_curves.png"
    )
    result["seconds"] = time.perf_counter() - t0  # fmt: skip
    write_result(out_path, result)
    print(f"[ablations] wrote {out_path} in {result['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
