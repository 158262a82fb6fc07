"""Image-text embedding metrics (thesis chapter 4): retrieval R@K, zero-shot top-k, alignment, S_U, uniformity, gap.

Legend: N = pairs, C = classes, D = dim. Inputs are L2-normalized embeddings; pair j is (img_ND[j], txt_ND[j]).

Two different quantities are called "uniformity" in the literature; both are here under distinct names:

* :func:`s_u_eq412`, the thesis' S_U (eq. 4.12), a cross-modal statistic of *mismatched image-text pairs*:
  log-mean of exp(-cosine). It is higher when mismatched pairs are less similar (roughly minus their mean cosine);
  it does not measure how evenly one modality spreads over the sphere.
* :func:`wang_isola_uniformity`, Wang & Isola (2020), within one modality: log E exp(-2 ||x - y||^2) over distinct
  pairs; lower = more uniform, 0 = collapsed to one point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _check_pairs(img_ND: torch.Tensor, txt_ND: torch.Tensor) -> None:
    if img_ND.dim() != 2 or img_ND.shape != txt_ND.shape:
        raise ValueError(
            f"expected equal [N, D] image/text embeddings, got {tuple(img_ND.shape)} and {tuple(txt_ND.shape)}"
        )


def _rank_of_target(scores_NM: torch.Tensor, target_N: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target column; ties count against the target (pessimistic)."""
    target_scores = scores_NM.gather(1, target_N[:, None])
    return (scores_NM >= target_scores).sum(1) - 1


def retrieval_recall(img_ND: torch.Tensor, txt_ND: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image→text and text→image recall@K with one ground-truth partner per item (pair j ↔ j)."""
    _check_pairs(img_ND, txt_ND)
    sims = img_ND.double() @ txt_ND.double().T
    target = torch.arange(sims.shape[0])
    i2t, t2i = _rank_of_target(sims, target), _rank_of_target(sims.T, target)
    out = {}
    for k in ks:
        out[f"image_to_text/R@{k}"] = float((i2t < k).double().mean())
        out[f"text_to_image/R@{k}"] = float((t2i < k).double().mean())
    return out


def zero_shot_topk(
    img_ND: torch.Tensor, class_CD: torch.Tensor, labels_N: torch.Tensor, ks: Sequence[int] = (1, 3, 5)
) -> dict[str, float]:
    """Top-k accuracy of classifying images by their most similar class text embedding (prompt-averaged)."""
    if img_ND.shape[1] != class_CD.shape[1]:
        raise ValueError(f"image dim {img_ND.shape[1]} != class embedding dim {class_CD.shape[1]}")
    rank = _rank_of_target(img_ND.double() @ class_CD.double().T, labels_N.long())
    return {f"top{k}": float((rank < k).double().mean()) for k in ks}


def alignment(img_ND: torch.Tensor, txt_ND: torch.Tensor) -> float:
    """S_A = (1/N) sum_j I_j^T T_j (eq. 4.12): mean cosine of matched pairs; higher is better aligned."""
    _check_pairs(img_ND, txt_ND)
    return float((img_ND.double() * txt_ND.double()).sum(1).mean())


def s_u_eq412(img_ND: torch.Tensor, txt_ND: torch.Tensor) -> float:
    """S_U = log( 1/(N(N-1)) sum_{j != k} exp(-I_j^T T_k) ) (eq. 4.12), over mismatched image-text pairs.

    Direction: it increases as mismatched pairs become *less* similar (to first order it is minus their mean cosine
    plus half its variance); within [-1, 1] for unit vectors. A higher S_U therefore means mismatched pairs lie
    further apart, not a less uniform embedding (that is :func:`wang_isola_uniformity`). NaN for N < 2.
    """
    _check_pairs(img_ND, txt_ND)
    n = img_ND.shape[0]
    if n < 2:
        return math.nan
    sims = img_ND.double() @ txt_ND.double().T
    off = ~torch.eye(n, dtype=torch.bool)
    return float(torch.logsumexp(-sims[off], dim=0) - math.log(n * (n - 1)))


def wang_isola_uniformity(x_ND: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola (2020) uniformity of one modality: log( mean_{j < k} exp(-t ||x_j - x_k||^2) ), t = 2.

    Lower = more uniform on the hypersphere; 0 when all N points coincide (collapse); for unit vectors at least
    -4t. Computed in float64 over all N(N-1)/2 distinct pairs. NaN for N < 2.

    Example::

        >>> round(wang_isola_uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])), 4)  # antipodal: ||x-y||^2 = 4
        -8.0
    """
    if x_ND.dim() != 2:
        raise ValueError(f"expected [N, D] embeddings, got {tuple(x_ND.shape)}")
    n = x_ND.shape[0]
    if n < 2:
        return math.nan
    sq_dist_P = torch.pdist(x_ND.double()).square()
    return float(torch.logsumexp(-t * sq_dist_P, dim=0) - math.log(sq_dist_P.numel()))


def modality_gap(img_ND: torch.Tensor, txt_ND: torch.Tensor) -> float:
    """Euclidean distance between the image and text embedding centroids."""
    return float(torch.linalg.vector_norm(img_ND.double().mean(0) - txt_ND.double().mean(0)))
