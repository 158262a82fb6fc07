"""Softmax cross-entropy Hessian in logit space times K tangents: the readable reference.

Legend: K = tangents, N = rows, C = classes. The Hessian of CE(z, y) = -log softmax(z)_y wrt the logits z is
J = diag(p) - p p^T (p = softmax(z), independent of y), so for each tangent u: J u = p * u - p (p . u).
Math in fp32 at least (float64 kept).
"""

from __future__ import annotations

import torch


def softmax_ce_hvp(logits_NC: torch.Tensor, tangents_KNC: torch.Tensor) -> torch.Tensor:
    """[K, N, C] in the tangents' dtype: (diag(p_n) - p_n p_n^T) u_kn for every k and row n."""
    acc = torch.promote_types(tangents_KNC.dtype, torch.float32)
    p_NC = torch.softmax(logits_NC.to(acc), dim=-1)
    u_KNC = tangents_KNC.to(acc)
    return (p_NC * (u_KNC - (p_NC * u_KNC).sum(-1, keepdim=True))).to(tangents_KNC.dtype)
