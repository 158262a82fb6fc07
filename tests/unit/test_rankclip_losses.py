"""RankCLIP losses against slow, obviously-correct Python references (explicit loops over rows and ranks k)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from framework.losses.contrastive import RankCLIPLossConfig, clip_loss, plackett_luce_loss, rankclip_loss


def slow_clip(img: list[list[float]], txt: list[list[float]], scale: float) -> float:
    n = len(img)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    total = 0.0
    for j in range(n):
        i2t = [scale * dot(img[j], txt[k]) for k in range(n)]
        t2i = [scale * dot(txt[j], img[k]) for k in range(n)]
        total += math.log(sum(math.exp(v) for v in i2t)) - i2t[j]
        total += math.log(sum(math.exp(v) for v in t2i)) - t2i[j]
    return total / (2 * n)


def slow_pl(ego: list[list[float]], ref: list[list[float]], decay: str = "log") -> float:
    """For each row: order items by ref (descending, ties by index), then -sum_k mu_k log pi(y_k | y_<k)."""
    total = 0.0
    for e_row, r_row in zip(ego, ref, strict=True):
        order = sorted(range(len(r_row)), key=lambda d: (-r_row[d], d))
        remaining = list(order)
        row_loss = 0.0
        for k, d in enumerate(order, start=1):
            mu = 1.0 / math.log(k + 1) if decay == "log" else 1.0
            log_pi = e_row[d] - math.log(sum(math.exp(e_row[x]) for x in remaining))
            row_loss -= mu * log_pi
            remaining.remove(d)
        total += row_loss
    return total / len(ego)


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_clip_loss_matches_reference(n: int) -> None:
    img, txt = unit(n, 4, 0), unit(n, 4, 1)
    assert clip_loss(img, txt, 7.0).item() == pytest.approx(slow_clip(img.tolist(), txt.tolist(), 7.0), rel=1e-9)


@pytest.mark.parametrize("decay", ["log", "none"])
@pytest.mark.parametrize(("n", "m"), [(1, 1), (3, 4), (6, 6), (2, 9)])
def test_plackett_luce_matches_reference(decay: str, n: int, m: int) -> None:
    g = torch.Generator().manual_seed(n * 10 + m)
    ego, ref = torch.randn(n, m, generator=g), torch.randn(n, m, generator=g)
    got = plackett_luce_loss(ego, ref, decay=decay).item()
    assert got == pytest.approx(slow_pl(ego.tolist(), ref.tolist(), decay), rel=1e-5)


def test_ties_in_reference_keep_index_order() -> None:
    ego = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    ref = torch.tensor([[1.0, 1.0, 0.0, 1.0]])  # items 0, 1, 3 tie at the top
    assert plackett_luce_loss(ego, ref).item() == pytest.approx(slow_pl(ego.tolist(), ref.tolist()), rel=1e-6)
    # Random tie-breaking is seeded and only reorders the tied items.
    draws = {plackett_luce_loss(ego, ref, tie_break="random", generator=torch.Generator().manual_seed(s)).item()
             for s in range(30)}  # fmt: skip
    assert len(draws) > 1
    permuted = {
        slow_pl(ego.tolist(), [[1.0 + 1e-3 * p.index(i) * -1 if i in p else 0.0 for i in range(4)]])
        for p in ([0, 1, 3], [0, 3, 1], [1, 0, 3], [1, 3, 0], [3, 0, 1], [3, 1, 0])
    }
    assert all(min(abs(d - q) for q in permuted) < 1e-5 for d in draws)


def test_pl_gradient_flows_to_ego_only_and_prefers_the_reference_order() -> None:
    ref = torch.tensor([[3.0, 2.0, 1.0]])
    ego = torch.zeros(1, 3, requires_grad=True)
    plackett_luce_loss(ego, ref).backward()
    g = ego.grad[0]
    assert g[0] < g[1] < g[2]  # descending the loss raises the top-ranked score most
    agree = plackett_luce_loss(torch.tensor([[3.0, 2.0, 1.0]]), ref)
    disagree = plackett_luce_loss(torch.tensor([[1.0, 2.0, 3.0]]), ref)
    assert agree < disagree


def test_rankclip_terms_and_lambda_zero_reductions() -> None:
    img, txt = unit(6, 5, 2), unit(6, 5, 3)
    scale = 10.0
    clip = slow_clip(img.tolist(), txt.tolist(), scale)
    l_in = slow_pl((txt @ txt.T).tolist(), (img @ img.T).tolist())
    l_cross = slow_pl((img @ txt.T).tolist(), (txt @ img.T).tolist())

    full = rankclip_loss(img, txt, scale)
    assert full["clip"].item() == pytest.approx(clip, rel=1e-9)
    assert full["in_modal"].item() == pytest.approx(l_in, rel=1e-6)
    assert full["cross_modal"].item() == pytest.approx(l_cross, rel=1e-6)
    assert full["loss"].item() == pytest.approx(clip + (l_in + l_cross) / 16, rel=1e-6)

    only_clip = rankclip_loss(img, txt, scale, RankCLIPLossConfig(lambda_in=0, lambda_cross=0))
    assert only_clip["loss"].item() == pytest.approx(clip_loss(img, txt, scale).item(), rel=1e-12)
    rank_c = rankclip_loss(img, txt, scale, RankCLIPLossConfig(lambda_in=0))  # RankCLIP_C
    assert rank_c["loss"].item() == pytest.approx(clip + l_cross / 16, rel=1e-6)
    rank_i = rankclip_loss(img, txt, scale, RankCLIPLossConfig(lambda_cross=0))  # RankCLIP_I
    assert rank_i["loss"].item() == pytest.approx(clip + l_in / 16, rel=1e-6)


def test_variants_temperature_scaling_and_symmetric_in_modal() -> None:
    img, txt = unit(5, 4, 4), unit(5, 4, 5)
    scaled = rankclip_loss(img, txt, 3.0, RankCLIPLossConfig(scale_by_temperature=True))
    want = slow_pl((3.0 * img @ txt.T).tolist(), (txt @ img.T).tolist())
    assert scaled["cross_modal"].item() == pytest.approx(want, rel=1e-6)
    sym = rankclip_loss(img, txt, 3.0, RankCLIPLossConfig(symmetric_in_modal=True))
    both = 0.5 * (slow_pl((txt @ txt.T).tolist(), (img @ img.T).tolist())
                  + slow_pl((img @ img.T).tolist(), (txt @ txt.T).tolist()))  # fmt: skip
    assert sym["in_modal"].item() == pytest.approx(both, rel=1e-6)


def test_gradients_match_autograd_of_the_reference_math() -> None:
    img = unit(4, 3, 6).requires_grad_(True)
    txt = unit(4, 3, 7).requires_grad_(True)
    rankclip_loss(img, txt, 5.0)["loss"].backward()
    torch.autograd.gradcheck(
        lambda a, b: rankclip_loss(a, b, 5.0)["loss"],
        (img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()),
    )
    assert img.grad is not None and txt.grad is not None and img.grad.abs().sum() > 0


@pytest.mark.parametrize("symmetric", [False, True])
def test_local_rows_average_to_the_full_loss(symmetric: bool) -> None:
    """Local-loss mode: the mean of the row-block losses (one block per rank) is the full global-batch loss."""
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=1)
    cfg = RankCLIPLossConfig(symmetric_in_modal=symmetric)
    full = rankclip_loss(img, txt, 7.0, cfg)
    blocks = [rankclip_loss(img, txt, 7.0, cfg, rows=slice(r * 4, (r + 1) * 4)) for r in range(2)]
    for term in ("loss", "clip", "in_modal", "cross_modal"):
        torch.testing.assert_close(0.5 * (blocks[0][term] + blocks[1][term]), full[term])
    assert not torch.allclose(blocks[0]["loss"], blocks[1]["loss"])  # the blocks differ; only their mean matches


def test_per_position_divides_the_ranking_terms_by_the_list_length() -> None:
    g = torch.Generator().manual_seed(4)
    img = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    full = rankclip_loss(img, txt, 7.0, RankCLIPLossConfig(symmetric_in_modal=True))
    mean = rankclip_loss(img, txt, 7.0, RankCLIPLossConfig(symmetric_in_modal=True, per_position=True))
    torch.testing.assert_close(mean["clip"], full["clip"])
    torch.testing.assert_close(mean["in_modal"], full["in_modal"] / 6)
    torch.testing.assert_close(mean["cross_modal"], full["cross_modal"] / 6)
    torch.testing.assert_close(mean["loss"], mean["clip"] + (mean["in_modal"] + mean["cross_modal"]) / 16)


@pytest.mark.parametrize(
    "cfg", [RankCLIPLossConfig(), RankCLIPLossConfig(symmetric_in_modal=True, scale_by_temperature=True)]
)
def test_rankclip_loss_same_terms_and_grads_reference_vs_triton(cfg: RankCLIPLossConfig) -> None:
    """The backend switch: every term and the gradients wrt both embeddings agree (CPU: Triton interpreter)."""
    g = torch.Generator().manual_seed(3)
    img0 = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=1)
    txt0 = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=1)
    out = {}
    for backend in ("reference", "triton"):
        img, txt = img0.clone().requires_grad_(), txt0.clone().requires_grad_()
        terms = rankclip_loss(img, txt, 20.0, dataclasses.replace(cfg, kernel_backend=backend))
        terms["loss"].backward()
        out[backend] = ({k: v.detach() for k, v in terms.items()}, img.grad, txt.grad)
    (t_r, gi_r, gt_r), (t_t, gi_t, gt_t) = out["reference"], out["triton"]
    assert t_r["in_modal"] > 0 and t_r["cross_modal"] > 0
    for k in t_r:
        torch.testing.assert_close(t_t[k], t_r[k], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gi_t, gi_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gt_t, gt_r, rtol=1e-5, atol=1e-6)
