"""Global-batch contrastive losses over 2 gloo ranks: parameter gradients equal the single-process loss's.

Each rank embeds its half of the batch with the same projections, gathers features with autograd, computes the
loss, and backpropagates; averaging parameter gradients over ranks (what DDP does) must reproduce the gradient of
the loss computed in one process on the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from framework.distributed.collectives import gather_features, local_rows
from framework.distributed.spawn import run_multiprocess
from framework.losses.contrastive import clip_loss, rankclip_loss

N_LOCAL, D_IN, D = 4, 6, 5


def _setup():
    torch.manual_seed(0)
    img_proj = torch.nn.Linear(D_IN, D).double()
    txt_proj = torch.nn.Linear(D_IN, D).double()
    g = torch.Generator().manual_seed(1)
    x_img = torch.randn(2 * N_LOCAL, D_IN, generator=g, dtype=torch.float64)
    x_txt = torch.randn(2 * N_LOCAL, D_IN, generator=g, dtype=torch.float64)
    return img_proj, txt_proj, x_img, x_txt


def _loss(kind: str, img, txt, rows: slice | None = None):
    if kind == "clip":
        return clip_loss(img, txt, 4.0)
    if kind == "rankclip":
        return rankclip_loss(img, txt, 4.0)["loss"]
    # local loss: own rows against all columns, labels offset by rank (each rank's mean; DDP averages them)
    if kind == "local":
        logits = 4.0 * img[rows] @ txt.T
        logits_t = 4.0 * txt[rows] @ img.T
        targets = torch.arange(rows.start, rows.stop)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits_t, targets))
    # local RankCLIP through the library's rows= argument (every term is a mean over independent ego rows)
    return rankclip_loss(img, txt, 4.0, rows=rows)["loss"]


def _grads(params) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in params]


def _distributed(kind: str) -> list[torch.Tensor]:
    img_proj, txt_proj, x_img, x_txt = _setup()
    mine = local_rows(N_LOCAL)
    img = gather_features(F.normalize(img_proj(x_img[mine]), dim=1))
    txt = gather_features(F.normalize(txt_proj(x_txt[mine]), dim=1))
    _loss(kind, img, txt, mine).backward()
    params = [*img_proj.parameters(), *txt_proj.parameters()]
    for p in params:  # DDP's gradient averaging
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
    return _grads(params)


def _single(kind: str) -> list[torch.Tensor]:
    img_proj, txt_proj, x_img, x_txt = _setup()
    img, txt = F.normalize(img_proj(x_img), dim=1), F.normalize(txt_proj(x_txt), dim=1)
    # the global objective of local-loss mode is the plain full-batch loss
    kind = {"local": "clip", "local_rankclip": "rankclip"}.get(kind, kind)
    _loss(kind, img, txt).backward()
    return _grads([*img_proj.parameters(), *txt_proj.parameters()])


def _check(kind: str) -> None:
    results = run_multiprocess(_distributed, 2, kind)
    want = _single(kind)
    for got in results:
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert max(w.abs().max() for w in want) > 1e-3  # non-trivial gradients


def test_gathered_clip_loss_gradients_match_single_process() -> None:
    _check("clip")


def test_gathered_rankclip_loss_gradients_match_single_process() -> None:
    _check("rankclip")


def test_local_loss_mode_gradients_match_single_process() -> None:
    _check("local")


def test_local_rankclip_mode_gradients_match_single_process() -> None:
    _check("local_rankclip")
