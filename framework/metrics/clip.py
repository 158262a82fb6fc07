"""Image-text embedding metrics (thesis chapter 4): retrieval R@K, zero-shot top-k, alignment, uniformity, gap.

Legend: N = pairs, C = classes, D = dim. Inputs are L2-normalized embeddings; pair j is (img_ND[j], txt_ND[j]).
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


def uniformity(img_ND: torch.Tensor, txt_ND: torch.Tensor) -> float:
    """S_U = log( 1/(N(N-1)) sum_{j != k} exp(-I_j^T T_k) ) (eq. 4.12), over mismatched pairs."""
    _check_pairs(img_ND, txt_ND)
    n = img_ND.shape[0]
    if n < 2:
        return math.nan
    sims = img_ND.double() @ txt_ND.double().T
    off = ~torch.eye(n, dtype=torch.bool)
    return float(torch.logsumexp(-sims[off], dim=0) - math.log(n * (n - 1)))


def modality_gap(img_ND: torch.Tensor, txt_ND: torch.Tensor) -> float:
    """Euclidean distance between the image and text embedding centroids."""
    return float(torch.linalg.vector_norm(img_ND.double().mean(0) - txt_ND.double().mean(0)))
