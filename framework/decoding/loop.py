"""Decoding loops over a transformers LVLM's forward with its KV cache (no patched ``generate``): greedy, beam
search and VCD; HALC builds on the same loop (its FOV passes are extra streams of one batched forward).

Legend: B = prompts, S = streams (images decoded in lock-step: the clean image, VCD's noised copy, HALC's FOVs),
L = prompt length, V = vocabulary, k = beams.

A *stream* is one image per prompt; all streams share the prompt and the tokens chosen so far, so they are stacked
into one batch of S x B rows and run as one forward per step. ``combine`` maps the streams' next-token logits
[S, B, V] to the logits the token is chosen from [B, V]. The first step runs the prompt with the images; later steps
feed only the new token with the cache (``use_cache=False`` re-runs the whole sequence each step: the reference the
cached loop is tested against).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from framework.decoding.contrast import vcd_logits
from framework.losses.visual_dependence import noised_pixels

Combine = Callable[[torch.Tensor], torch.Tensor]


def _forward(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor | None, past, use_cache: bool
):
    if use_cache and past is not None:
        return model(input_ids=ids[:, -1:], attention_mask=mask, past_key_values=past, use_cache=True)
    return model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=use_cache)


@torch.no_grad()
def decode(
    model: nn.Module, prompt_BL: torch.Tensor, streams: Sequence[torch.Tensor], combine: Combine, *,
    max_new_tokens: int, eos_id: int, use_cache: bool = True,
) -> list[list[int]]:  # fmt: skip
    """Token ids generated for each prompt (up to and without its EOS), choosing argmax of ``combine``."""
    model.eval()
    S, (B, _) = len(streams), prompt_BL.shape
    ids = prompt_BL.repeat(S, 1)
    mask = torch.ones_like(ids)
    pixels = torch.cat(list(streams))
    out = _forward(model, ids, mask, pixels, None, use_cache)
    done = torch.zeros(B, dtype=torch.bool)
    gen: list[list[int]] = [[] for _ in range(B)]
    for _ in range(max_new_tokens):
        logits_SBV = out.logits[:, -1].float().view(S, B, -1)
        nxt = combine(logits_SBV).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        for b in range(B):
            if not done[b] and nxt[b] != eos_id:
                gen[b].append(int(nxt[b]))
        done |= nxt == eos_id
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt.repeat(S)[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = _forward(model, ids, mask, pixels, out.past_key_values if use_cache else None, use_cache)
    return gen


def greedy(model: nn.Module, prompt_BL: torch.Tensor, pixels: torch.Tensor, **kw) -> list[list[int]]:
    return decode(model, prompt_BL, [pixels], lambda logits: logits[0], **kw)


@dataclass(kw_only=True, frozen=True)
class VCDConfig:
    alpha: float = 1.0
    """Contrast strength: (1 + alpha) f(v) - alpha f(v*)."""
    beta: float = 0.1
    """Adaptive plausibility: tokens with p(v) >= beta max p(v) only."""
    noise_step: int = 900
    """Diffusion step of the noised image (VCD's schedule, framework/losses/visual_dependence.py)."""
    seed: int = 0
    """Seed of the noise."""


def vcd_noised(pixels: torch.Tensor, cfg: VCDConfig = VCDConfig()) -> torch.Tensor:
    """VCD's distorted images: one noise draw (from ``cfg.seed``) shared by every image, so that an image's
    decoding does not depend on the batch it is decoded in."""
    eps = torch.randn((1, *pixels.shape[1:]), generator=torch.Generator().manual_seed(cfg.seed), dtype=pixels.dtype)
    return noised_pixels(pixels, cfg.noise_step, noise=eps.expand_as(pixels))


def vcd(model: nn.Module, prompt_BL: torch.Tensor, pixels: torch.Tensor, cfg: VCDConfig = VCDConfig(),
        **kw) -> list[list[int]]:  # fmt: skip
    """Visual contrastive decoding: the clean and the noised image (:func:`vcd_noised`) as two streams of one
    batched forward."""
    noisy = vcd_noised(pixels, cfg)
    return decode(model, prompt_BL, [pixels, noisy], lambda lg: vcd_logits(lg[0], lg[1], cfg.alpha, cfg.beta), **kw)


def select_beams(
    scores_k: torch.Tensor, logp_kV: torch.Tensor, k: int, eos_id: int
) -> tuple[list[tuple[int, int, float]], list[tuple[int, float]]]:  # fmt: skip
    """One beam step: of all (beam, token) expansions by total log-probability (ties: lower flat index), the best
    ones in order until k continue; expansions ending in EOS among them are returned as finished.

    Returns:
        (alive: [(parent beam, token, score)] at most k; finished: [(parent beam, score)]).
    """
    total = (scores_k[:, None].double() + logp_kV.double()).flatten()
    V = logp_kV.shape[1]
    order = sorted(range(total.numel()), key=lambda i: (-float(total[i]), i))
    alive: list[tuple[int, int, float]] = []
    finished: list[tuple[int, float]] = []
    for i in order:
        if len(alive) == k or not torch.isfinite(total[i]):
            break
        b, tok = divmod(i, V)
        if tok == eos_id:
            finished.append((b, float(total[i])))
        else:
            alive.append((b, tok, float(total[i])))
    return alive, finished


def advance_beams(
    model: nn.Module, seqs: list[list[int]], ids: torch.Tensor, out, alive: list[tuple[int, int, float]],
    pixels_1: torch.Tensor, use_cache: bool = True,
) -> tuple[list[list[int]], torch.Tensor, torch.Tensor, Any]:  # fmt: skip
    """The beams ``alive`` ((parent, token, score) each) continue: their sequences, scores and ids, and the forward
    of their new tokens (the parents' cache rows reordered; without the cache, the whole sequences again)."""
    parents = torch.tensor([b for b, _, _ in alive])
    seqs = [seqs[b] + [tok] for b, tok, _ in alive]
    scores = torch.tensor([s for _, _, s in alive], dtype=torch.float64)
    ids = torch.cat([ids[parents], torch.tensor([[tok] for _, tok, _ in alive])], 1)
    past = None
    if use_cache:
        past = out.past_key_values
        past.reorder_cache(parents)
    pixels = pixels_1.expand(len(alive), *pixels_1.shape[1:])
    return seqs, scores, ids, _forward(model, ids, torch.ones_like(ids), pixels, past, use_cache)


@torch.no_grad()
def beam_search(
    model: nn.Module, prompt_1L: torch.Tensor, pixels_1: torch.Tensor, *, k: int = 3, max_new_tokens: int,
    eos_id: int, length_penalty: float = 1.0, use_cache: bool = True,
) -> list[int]:  # fmt: skip
    """Beam search for one prompt: the finished hypothesis with the best score / length^length_penalty (an
    unfinished one if none ends within ``max_new_tokens``); stops once k hypotheses have finished."""
    model.eval()
    ids, mask = prompt_1L, torch.ones_like(prompt_1L)
    out = _forward(model, ids, mask, pixels_1, None, use_cache)
    seqs: list[list[int]] = [[]]
    scores = torch.zeros(1, dtype=torch.float64)
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_new_tokens):
        logp = torch.log_softmax(out.logits[:, -1].double(), -1)
        alive, ended = select_beams(scores, logp, k, eos_id)
        finished += [(seqs[b], s) for b, s in ended]
        if len(finished) >= k or not alive:
            break
        seqs, scores, ids, out = advance_beams(model, seqs, ids, out, alive, pixels_1, use_cache)
    else:
        finished += list(zip(seqs, scores.tolist(), strict=True))
    if not finished:
        finished = list(zip(seqs, scores.tolist(), strict=True))
    return max(finished, key=lambda f: f[1] / max(len(f[0]) + 1, 1) ** length_penalty)[0]
