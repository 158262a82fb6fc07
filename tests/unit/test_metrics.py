"""Ranking metrics against hand-computed values and a brute-force pairwise AUC (single process)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.metrics.ranking import RankingMetrics, auc, gather_variable, nce, nce_from_logits

LN2 = math.log(2.0)


def t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------- AUC


def test_auc_four_examples() -> None:
    # pos scores {0.35, 0.8}, neg scores {0.1, 0.4}; pairs (pos > neg?):
    # 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes  ->  3 / (2*2) = 0.75
    assert auc(t([0.1, 0.4, 0.35, 0.8]), t([0, 0, 1, 1])) == 0.75


def test_auc_ties_count_one_half() -> None:
    # One pos and one neg with the same score: the single pair counts 1/2 -> 0.5
    assert auc(t([0.5, 0.5]), t([1, 0])) == 0.5
    # pos {0.5, 0.9}, neg {0.2, 0.5}: 0.5>0.2 -> 1, 0.5=0.5 -> 1/2, 0.9>0.2 -> 1, 0.9>0.5 -> 1
    # (1 + 0.5 + 1 + 1) / 4 = 0.875
    assert auc(t([0.2, 0.5, 0.5, 0.9]), t([0, 0, 1, 1])) == 0.875
    # All scores equal: every one of the 2*3 pairs is a tie -> 6 * 1/2 / 6 = 0.5
    assert auc(torch.full((5,), 3.0), t([1, 0, 1, 0, 0])) == 0.5


def test_auc_perfect_and_reversed_predictor() -> None:
    labels = t([0, 1, 0, 1, 1])
    # Every positive scores above every negative -> 6/6; exactly inverted -> 0/6
    assert auc(t([0.1, 0.7, 0.2, 0.8, 0.9]), labels) == 1.0
    assert auc(t([0.9, 0.2, 0.8, 0.1, 0.0]), labels) == 0.0


def test_auc_is_invariant_to_monotone_transform_and_accepts_any_shape() -> None:
    logits = t([-2.0, 0.3, -0.5, 1.7, 0.3, 2.2]).reshape(2, 3)
    labels = t([0, 1, 0, 1, 0, 1]).reshape(2, 3)
    assert auc(logits, labels) == auc(torch.sigmoid(logits), labels)


def test_auc_weight_mask_drops_rows() -> None:
    scores = t([0.1, 0.4, 0.35, 0.8, 0.99])
    labels = t([0, 0, 1, 1, 0])
    # Unmasked: the extra negative 0.99 beats both positives: pos 0.35 beats {0.1} -> 1, pos 0.8 beats {0.1, 0.4} -> 2
    # 3 / (2*3) = 0.5
    assert auc(scores, labels) == 0.5
    # Masking it out gives back the 4-example case: 0.75
    assert auc(scores, labels, t([1, 1, 1, 1, 0])) == 0.75
    assert auc(scores, labels, torch.tensor([True, True, True, True, False])) == 0.75


def test_auc_general_weights_equal_duplication() -> None:
    scores = t([0.1, 0.4, 0.35, 0.8])
    labels = t([0, 0, 1, 1])
    # Weight 2 on the negative 0.4 == that row twice: pairs vs {0.1, 0.4, 0.4}:
    # 0.35 beats {0.1} -> 1, 0.8 beats all 3 -> 3; 4 / (2*3) = 2/3
    weighted = auc(scores, labels, t([1, 2, 1, 1]))
    assert weighted == pytest.approx(2 / 3, abs=1e-15)
    assert weighted == auc(t([0.1, 0.4, 0.4, 0.35, 0.8]), t([0, 0, 0, 1, 1]))


def test_auc_nan_cases() -> None:
    assert math.isnan(auc(t([0.1, 0.9]), t([1, 1])))  # one class
    assert math.isnan(auc(t([0.1, 0.9]), t([0, 0])))
    assert math.isnan(auc(t([0.3]), t([1])))  # n = 1
    assert math.isnan(auc(t([]), t([])))  # empty
    # The only negative is masked out -> one class left
    assert math.isnan(auc(t([0.1, 0.9, 0.5]), t([0, 1, 1]), t([0, 1, 1])))
    assert math.isnan(auc(t([0.1, 0.9]), t([0, 1]), t([0, 0])))
    assert math.isnan(auc(t([0.1, math.nan]), t([0, 1])))  # diverged model
    # A NaN score on a masked-out row does not matter
    assert auc(t([0.1, 0.9, math.nan]), t([0, 1, 1]), t([1, 1, 0])) == 1.0


def test_auc_validation() -> None:
    with pytest.raises(ValueError, match="binary labels"):
        auc(t([0.1, 0.9]), t([0, 2]))
    with pytest.raises(ValueError, match="same shape"):
        auc(t([0.1, 0.9]), t([0, 1, 1]))
    with pytest.raises(ValueError, match="nonnegative"):
        auc(t([0.1, 0.9]), t([0, 1]), t([1, -1]))
    with pytest.raises(ValueError, match="weights must have the shape"):
        auc(t([0.1, 0.9]), t([0, 1]), t([1]))


def _brute_force_auc(scores: list[float], labels: list[int], weights: list[int]) -> float:
    """O(n²) Mann–Whitney count in exact rational arithmetic."""
    pos = [(s, w) for s, y, w in zip(scores, labels, weights, strict=True) if y == 1 and w > 0]
    neg = [(s, w) for s, y, w in zip(scores, labels, weights, strict=True) if y == 0 and w > 0]
    if not pos or not neg:
        return math.nan
    u = Fraction(0)
    for sp, wp in pos:
        for sn, wn in neg:
            u += wp * wn * (Fraction(1) if sp > sn else Fraction(1, 2) if sp == sn else Fraction(0))
    return float(u / (sum(w for _, w in pos) * sum(w for _, w in neg)))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=14).flatmap(
        lambda n: st.tuples(
            # Scores from a handful of values so that ties are frequent.
            st.lists(st.sampled_from([-1.5, 0.0, 0.25, 0.5, 2.0, 7.0]), min_size=n, max_size=n),
            st.lists(st.integers(0, 1), min_size=n, max_size=n),
            st.lists(st.integers(0, 3), min_size=n, max_size=n),
        )
    ),
    st.booleans(),
)
def test_auc_equals_brute_force_pairwise(data: tuple[list[float], list[int], list[int]], use_weights: bool) -> None:
    scores, labels, weights = data
    if not use_weights:
        weights = [1] * len(scores)
    got = auc(t(scores), t(labels), t(weights) if use_weights else None)
    expected = _brute_force_auc(scores, labels, weights)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        # Integer weights keep U and P·N exact in float64, so both sides are the correctly rounded same rational.
        assert got == expected


# ----------------------------------------------------------------------------------------------------------- NCE


def test_nce_background_rate_one_half() -> None:
    # p̄ = 1/2 -> H(p̄) = -0.5 ln 0.5 - 0.5 ln 0.5 = ln 2
    # mean CE = (-ln 0.8 - ln(1 - 0.4)) / 2 = -ln(0.48) / 2 = 0.733969 / 2 = 0.366985
    # NCE = 0.366985 / 0.693147 = 0.529447
    got = nce(t([0.8, 0.4]), t([1, 0]))
    assert got == pytest.approx(-math.log(0.48) / (2 * LN2), rel=1e-12)
    assert got == pytest.approx(0.529447, abs=1e-6)


def test_nce_constant_predictor_at_background_rate_is_one() -> None:
    # p̄ = 1/2, p = 1/2 everywhere: mean CE = ln 2 = H(1/2) -> exactly 1.0
    assert nce(torch.full((4,), 0.5), t([1, 0, 0, 1])) == 1.0
    # p̄ = 1/4, p = 1/4: mean CE = (-ln 0.25 - 3 ln 0.75) / 4 = -0.25 ln 0.25 - 0.75 ln 0.75 = H(1/4) -> 1.0
    assert nce(torch.full((4,), 0.25), t([1, 0, 0, 0])) == pytest.approx(1.0, abs=1e-12)
    logit = math.log(0.25 / 0.75)
    assert nce_from_logits(torch.full((4,), logit), t([1, 0, 0, 0])) == pytest.approx(1.0, abs=1e-12)


def test_nce_perfect_predictor_is_near_zero() -> None:
    labels = t([1, 0, 0, 1])
    # p = y exactly is clamped to eps = 1e-7: CE = -ln(1 - 1e-7) ≈ 1e-7 per row -> NCE ≈ 1e-7 / ln 2 = 1.4427e-7
    assert nce(labels.clone(), labels) == pytest.approx(1e-7 / LN2, rel=1e-6)
    # From logits ±40 there is no clamp: CE = softplus(-40) ≈ e^-40 = 4.25e-18 -> NCE ≈ 6.1e-18
    got = nce_from_logits(t([40, -40, -40, 40]), labels)
    assert 0 < got == pytest.approx(math.exp(-40) / LN2, rel=1e-6)


def test_nce_from_logits_matches_nce_on_probabilities() -> None:
    logits = t([-3.0, -0.2, 0.1, 1.5, 2.5, -1.0])
    labels = t([0, 1, 0, 1, 1, 0])
    assert nce_from_logits(logits, labels) == pytest.approx(nce(torch.sigmoid(logits), labels), rel=1e-12)


def test_nce_from_logits_is_finite_for_extreme_logits() -> None:
    # Two confidently wrong rows: CE(x=1000, y=0) = softplus(1000) = 1000 and CE(x=-1000, y=1) = softplus(1000) = 1000
    # (no overflow, no clamp); p̄ = 1/2 -> NCE = 1000 / ln 2
    assert nce_from_logits(t([1000.0, -1000.0]), t([0, 1])) == pytest.approx(1000 / LN2, rel=1e-12)
    # The clamped probability version saturates at -ln(1e-7) = 16.118 instead.
    assert nce(torch.sigmoid(t([1000.0, -1000.0])), t([0, 1])) == pytest.approx(-math.log(1e-7) / LN2, rel=1e-6)


def test_nce_weights_mask_and_duplication() -> None:
    probs = t([0.8, 0.4, 0.99])
    labels = t([1, 0, 0])
    # Masking the third row gives the p̄ = 1/2 case above.
    assert nce(probs, labels, t([1, 1, 0])) == nce(t([0.8, 0.4]), t([1, 0]))
    # Weight 2 == the row twice.
    assert nce(probs, labels, t([2, 1, 1])) == pytest.approx(nce(t([0.8, 0.8, 0.4, 0.99]), t([1, 1, 0, 0])), rel=1e-12)


def test_nce_nan_when_background_rate_is_degenerate() -> None:
    assert math.isnan(nce(t([0.2, 0.7]), t([0, 0])))  # p̄ = 0 -> H = 0
    assert math.isnan(nce(t([0.2, 0.7]), t([1, 1])))  # p̄ = 1
    assert math.isnan(nce_from_logits(t([0.2, 0.7]), t([1, 1])))
    assert math.isnan(nce(t([0.2, 0.7]), t([0, 1]), t([1, 0])))  # p̄ = 0 after masking
    assert math.isnan(nce(t([0.2, 0.7]), t([0, 1]), t([0, 0])))  # nothing left
    assert math.isnan(nce(t([]), t([])))


def test_nce_validation() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nce(t([0.2, 0.7]), t([0, 1.5]))
    with pytest.raises(ValueError, match="same shape"):
        nce_from_logits(t([0.2, 0.7]), t([0]))


# ------------------------------------------------------------------------------------------------ RankingMetrics


def test_gather_variable_is_identity_without_process_group() -> None:
    x = torch.arange(6).reshape(3, 2)
    assert gather_variable(x) is x


def test_ranking_metrics_single_process_matches_functions() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 2, generator=gen)
    labels = (torch.rand(10, 2, generator=gen) < 0.4).float()
    labels[0] = torch.tensor([1.0, 0.0])  # both classes present in both tasks
    labels[1] = torch.tensor([0.0, 1.0])
    mask = torch.ones(10)
    mask[3] = 0.0

    m = RankingMetrics(["click", "like"])
    m.update(logits[:4], labels[:4], mask[:4])
    m.update(logits[4:].float(), labels[4:], mask[4:])
    out = m.compute()

    assert set(out) == {f"{k}/{m_}" for k in ("click", "like") for m_ in ("auc", "nce", "logloss", "label_rate")} | {
        "num_examples"
    }
    assert out["num_examples"] == 9.0  # row 3 is masked out (padding rows do not count)
    for i, task in enumerate(("click", "like")):
        x, y = logits[:, i].double(), labels[:, i].double()
        assert out[f"{task}/auc"] == auc(x, y, mask)
        assert out[f"{task}/nce"] == nce_from_logits(x, y, mask)
        keep = mask > 0
        ce = torch.nn.functional.binary_cross_entropy_with_logits(x[keep], y[keep])
        assert out[f"{task}/logloss"] == pytest.approx(ce.item(), rel=1e-12)
        assert out[f"{task}/label_rate"] == pytest.approx(y[keep].mean().item(), rel=1e-12)

    m.reset()
    empty = m.compute()
    assert empty["num_examples"] == 0.0
    assert all(math.isnan(v) for k, v in empty.items() if k != "num_examples")


def test_ranking_metrics_per_task_mask_and_single_task_1d() -> None:
    logits = t([[0.1, 5.0], [0.4, -5.0], [0.35, 0.0], [0.8, 1.0]])
    labels = t([[0, 1], [0, 0], [1, 0], [1, 1]])
    m = RankingMetrics(["a", "b"])
    m.update(logits, labels, t([[1, 1], [1, 1], [1, 0], [1, 1]]))
    out = m.compute()
    assert out["a/auc"] == 0.75  # the 4-example case
    # Task b keeps rows 0, 1, 3: pos {5.0, 1.0}, neg {-5.0} -> 1.0; label rate 2/3
    assert out["b/auc"] == 1.0
    assert out["b/label_rate"] == pytest.approx(2 / 3, rel=1e-15)

    single = RankingMetrics(["ctr"])
    single.update(t([0.1, 0.4, 0.35, 0.8]), t([0, 0, 1, 1]))
    assert single.compute()["ctr/auc"] == 0.75


def test_ranking_metrics_validation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        RankingMetrics([])
    with pytest.raises(ValueError, match="unique"):
        RankingMetrics(["a", "a"])
    m = RankingMetrics(["a", "b"])
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        m.update(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="labels_BT shape"):
        m.update(torch.zeros(4, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="weights_B must have shape"):
        m.update(torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(3))
