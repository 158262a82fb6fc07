"""The distribution arithmetic of contrastive decoding: VCD's image contrast and HALC's focal contrast
(seed 000, chapter 6 and appendix A; shared/methods/lvlm.md).

Legend: V = vocabulary, F = fields of view (FOVs), B = rows.

- Adaptive plausibility (both): keep the tokens whose probability under the reference distribution is at least
  ``beta`` times its maximum; the others get -inf (HALC and VCD: beta = 0.1).
- Contrast: ``(1 + alpha) f_i - alpha f_j`` on logits, i.e. p ∝ exp((1 + alpha) f_i - alpha f_j) (HALC alpha 0.05
  bi-directionally between two FOVs; VCD alpha 1 between the clean and the noised image).
- JSD between the next-token distributions of every FOV pair (natural log, in [0, ln 2]); HALC contrasts the m most
  divergent pairs (m = 6, all pairs of n = 4 FOVs), both ways: 2m candidate distributions.
"""

from __future__ import annotations

import itertools

import torch


def plausibility_mask(logits_BV: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """[B, V] bool: tokens with p >= beta * max p under ``logits`` (beta = 0 keeps every token)."""
    if not 0 <= beta <= 1:
        raise ValueError(f"plausibility beta must be in [0, 1], got {beta}")
    logp = torch.log_softmax(logits_BV.float(), dim=-1)
    return logp >= logp.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(beta)).clamp_min(-torch.inf)


def contrast(logits_i: torch.Tensor, logits_j: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 + alpha) f_i - alpha f_j (alpha = 0 gives f_i)."""
    return (1 + alpha) * logits_i.float() - alpha * logits_j.float()


def masked(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~keep, -torch.inf)


def jsd(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between the softmax distributions of the last dimension."""
    lp, lq = torch.log_softmax(logits_p.double(), -1), torch.log_softmax(logits_q.double(), -1)
    lm = torch.logsumexp(torch.stack([lp, lq]), 0) - torch.log(torch.tensor(2.0, dtype=torch.float64))

    def kl(a: torch.Tensor) -> torch.Tensor:  # KL(a || m); 0 log 0 = 0 for tokens a gives no mass (masked: -inf)
        return torch.where(torch.isneginf(a), torch.zeros_like(a), a.exp() * (a - lm)).sum(-1)

    return (0.5 * (kl(lp) + kl(lq))).clamp_min(0.0)


def top_divergent_pairs(logits_FV: torch.Tensor, m: int = 6) -> list[tuple[int, int]]:
    """The ``m`` FOV pairs (i < j) with the largest JSD, largest first (ties: lower indices first)."""
    pairs = list(itertools.combinations(range(logits_FV.shape[0]), 2))
    if not pairs:
        return []
    d = torch.stack([jsd(logits_FV[i], logits_FV[j]) for i, j in pairs])
    order = sorted(range(len(pairs)), key=lambda k: (-float(d[k]), k))
    return [pairs[k] for k in order[:m]]


def vcd_logits(clean_BV: torch.Tensor, noised_BV: torch.Tensor, alpha: float = 1.0, beta: float = 0.1) -> torch.Tensor:
    """VCD: (1 + alpha) f(v) - alpha f(v*), restricted to the tokens plausible under the clean image."""
    return masked(contrast(clean_BV, noised_BV, alpha), plausibility_mask(clean_BV, beta))


def focal_candidates(logits_FV: torch.Tensor, *, m: int = 6, alpha: float = 0.05, beta: float = 0.1) -> torch.Tensor:
    """HALC's 2m candidate next-token logits [2m, V]: for each of the m most divergent FOV pairs (i, j), the contrast
    both ways, each masked by plausibility under its own first FOV. One FOV: its own (masked) logits."""
    pairs = top_divergent_pairs(logits_FV, m)
    if not pairs:
        return masked(logits_FV.float(), plausibility_mask(logits_FV, beta))
    out = []
    for i, j in pairs:
        for a, b in ((i, j), (j, i)):
            out.append(masked(contrast(logits_FV[a], logits_FV[b], alpha), plausibility_mask(logits_FV[a], beta)))
    return torch.stack(out)
