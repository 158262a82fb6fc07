"""RankingMetrics / gather_variable on 2 real gloo ranks with uneven per-rank data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from framework.distributed.spawn import run_multiprocess
from framework.metrics.ranking import RankingMetrics, auc, gather_variable

TASKS = ("click", "like")

# Module-level targets: spawned interpreters import them by qualified name.


def _metrics_on_my_slice(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, bounds: list[int]
) -> tuple[dict[str, float], dict[str, float]]:
    """Feed this rank's slice (in two batches) and return (global metrics, AUC per task of the local slice alone)."""
    lo, hi = bounds[dist.get_rank()], bounds[dist.get_rank() + 1]
    m = RankingMetrics(TASKS)
    mid = lo + (hi - lo) // 2
    for a, b in ((lo, mid), (mid, hi)):
        if b > a:
            m.update(logits[a:b], labels[a:b], weights[a:b])
    global_metrics = m.compute()
    local_auc = {task: auc(logits[lo:hi, i], labels[lo:hi, i], weights[lo:hi]) for i, task in enumerate(TASKS)}
    return global_metrics, local_auc


def _gather_checks() -> dict[str, object]:
    rank = dist.get_rank()
    out: dict[str, object] = {}
    # Uneven first dims (2 and 5 rows) with a trailing dim.
    n = 2 if rank == 0 else 5
    out["uneven"] = gather_variable(torch.arange(n * 3, dtype=torch.float64).reshape(n, 3) + 100 * rank)
    # Rank 0 has nothing to contribute.
    out["one_empty"] = gather_variable(torch.arange(0 if rank == 0 else 4, dtype=torch.int64))
    out["all_empty"] = gather_variable(torch.zeros(0, 2))
    out["bool"] = gather_variable(torch.tensor([True, False]) if rank == 0 else torch.tensor([False]))
    try:
        gather_variable(torch.zeros(2, 3 if rank == 0 else 4))
    except ValueError as e:
        out["mismatch"] = str(e)
    return out


def _all_scenarios(
    scenarios: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]],
) -> dict[str, object]:
    # One spawn for every scenario: starting 2 interpreters with torch costs seconds on the 2-core machine.
    out: dict[str, object] = {name: _metrics_on_my_slice(*data) for name, data in scenarios.items()}
    out["gather"] = _gather_checks()
    return out


def _random_uneven() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    gen = torch.Generator().manual_seed(1234)
    n = 23
    logits = torch.randn(n, len(TASKS), generator=gen, dtype=torch.float64)
    # Coarse logits so that ties occur, also across ranks.
    logits = torch.round(logits * 2) / 2
    labels = (torch.rand(n, len(TASKS), generator=gen) < 0.35).double()
    weights = (torch.rand(n, generator=gen) < 0.85).double()
    return logits, labels, weights, [0, 6, n]  # 6 rows on rank 0, 17 on rank 1


def _constructed() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    # Rank 0 sees scores {0.9 pos, 0.8 neg}, rank 1 sees {0.2 pos, 0.1 neg, 0.05 neg}.
    logits = torch.tensor([[0.9], [0.8], [0.2], [0.1], [0.05]], dtype=torch.float64).repeat(1, len(TASKS))
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0], [0.0]], dtype=torch.float64).repeat(1, len(TASKS))
    return logits, labels, torch.ones(5, dtype=torch.float64), [0, 2, 5]


@pytest.fixture(scope="module")
def rank_results() -> list[dict[str, object]]:
    logits, labels, weights, _ = _constructed()
    scenarios = {
        "random": _random_uneven(),
        "constructed": _constructed(),
        "rank0_empty": (logits, labels, weights, [0, 0, 5]),  # rank 0 never calls update
    }
    return run_multiprocess(_all_scenarios, 2, scenarios)


def _assert_same_metrics(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            # Same rows in the same order through the same float64 code: bit-identical, not merely close.
            assert got[key] == value, (key, got[key], value)


def test_compute_on_uneven_ranks_equals_single_process_on_concatenated_data(
    rank_results: list[dict[str, object]],
) -> None:
    logits, labels, weights, _ = _random_uneven()
    reference = RankingMetrics(TASKS)  # no process group here: gather is the identity
    reference.update(logits, labels, weights)
    expected = reference.compute()
    # 23 rows; rows whose weight is 0 for every task are padding and do not count.
    w = weights if weights.dim() == 2 else weights[:, None]
    assert expected["num_examples"] == float((w > 0).any(dim=1).sum()) and 0 < expected["num_examples"] < 23
    assert all(not math.isnan(v) for v in expected.values())
    for out in rank_results:
        global_metrics, _ = out["random"]
        _assert_same_metrics(global_metrics, expected)
    assert rank_results[0]["random"][0] == rank_results[1]["random"][0]  # every rank returns the same dict


def test_compute_when_one_rank_has_no_data(rank_results: list[dict[str, object]]) -> None:
    logits, labels, weights, _ = _constructed()
    reference = RankingMetrics(TASKS)
    reference.update(logits, labels, weights)
    for out in rank_results:
        _assert_same_metrics(out["rank0_empty"][0], reference.compute())


def test_global_auc_differs_from_average_of_per_rank_aucs(rank_results: list[dict[str, object]]) -> None:
    # Each rank ranks its own rows perfectly (local AUC 1.0 and 1.0, average 1.0), but globally pos 0.2 falls below
    # neg 0.8: pos 0.9 beats {0.8, 0.1, 0.05} -> 3, pos 0.2 beats {0.1, 0.05} -> 2; AUC = 5 / (2*3) = 5/6
    local_aucs = [out["constructed"][1]["click"] for out in rank_results]
    assert local_aucs == [1.0, 1.0]
    for out in rank_results:
        global_metrics, _ = out["constructed"]
        assert global_metrics["click/auc"] == 5 / 6
        assert global_metrics["click/auc"] != sum(local_aucs) / 2
        assert global_metrics["click/label_rate"] == pytest.approx(2 / 5, rel=1e-15)
        assert global_metrics["num_examples"] == 5.0


def test_gather_variable_uneven_empty_bool_and_mismatch(rank_results: list[dict[str, object]]) -> None:
    expected_uneven = torch.cat(
        [torch.arange(6, dtype=torch.float64).reshape(2, 3), torch.arange(15, dtype=torch.float64).reshape(5, 3) + 100]
    )
    for result in rank_results:
        out = result["gather"]
        torch.testing.assert_close(out["uneven"], expected_uneven, rtol=0, atol=0)
        torch.testing.assert_close(out["one_empty"], torch.arange(4, dtype=torch.int64), rtol=0, atol=0)
        assert out["all_empty"].shape == (0, 2)
        assert out["bool"].dtype == torch.bool and out["bool"].tolist() == [True, False, False]
        # Both ranks raise (nobody is left blocked in a collective).
        assert "disagree on trailing shape" in out["mismatch"]
