"""Decoding strategies on hand-made distributions and a tiny random LLaVA: contrast arithmetic, plausibility, JSD,
FOV geometry, and the cached decoding loops against no-cache decoding and transformers' own greedy generate."""

from __future__ import annotations

import math

import pytest
import torch

from framework.decoding.contrast import (
    contrast,
    focal_candidates,
    jsd,
    plausibility_mask,
    top_divergent_pairs,
    vcd_logits,
)
from framework.decoding.fov import crop_resize, fov_boxes, random_box
from framework.decoding.loop import VCDConfig, beam_search, decode, greedy, select_beams, vcd
from framework.models.lvlm.model import LVLMConfig, build_lvlm


def test_plausibility_keeps_tokens_within_beta_of_the_best() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.04, 0.16]]))
    assert plausibility_mask(logits, 0.1).tolist() == [[True, True, False, True]]  # p >= 0.05
    assert plausibility_mask(logits, 0.5).tolist() == [[True, True, False, False]]  # p >= 0.25
    assert plausibility_mask(logits, 0.0).all() and plausibility_mask(logits, 1.0).sum() == 1


def test_contrast_and_vcd_formula() -> None:
    fi, fj = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 3.0, 0.0])
    assert contrast(fi, fj, 0.05).tolist() == pytest.approx([2.05, 0.9, 0.0])
    assert torch.equal(contrast(fi, fj, 0.0), fi)
    # VCD alpha 1: 2 f(v) - f(v*) = [3, -1, 0]; p(v) = [.665, .245, .090]: beta 0.2 masks token 2 (< .133)
    out = vcd_logits(fi[None], fj[None], alpha=1.0, beta=0.2)
    assert out[0, :2].tolist() == [3.0, -1.0] and out[0, 2] == -math.inf


def test_jsd_on_hand_made_distributions() -> None:
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 0.5, 0.5])
    m = (p + q) / 2
    kl = lambda a: sum(float(x) * math.log(float(x) / float(y)) for x, y in zip(a, m, strict=True) if x > 0)  # noqa: E731
    got = jsd(torch.log(p), torch.log(q))  # -inf logits where a distribution gives no mass
    assert float(got) == pytest.approx(0.5 * (kl(p) + kl(q)), abs=1e-9)
    one_hot = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert float(jsd(one_hot[0], one_hot[1])) == pytest.approx(math.log(2), abs=1e-9)
    assert float(jsd(p.log(), p.log())) == 0.0 and float(jsd(p, q)) == pytest.approx(float(jsd(q, p)))


def test_focal_candidates_contrast_the_most_divergent_pairs_both_ways() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 9)
    logits[3] = logits[0] + 0.01  # FOVs 0 and 3 nearly agree: their pair is the least divergent
    pairs = top_divergent_pairs(logits, 6)
    assert len(pairs) == 6 and pairs[-1] == (0, 3)
    assert top_divergent_pairs(logits, 2) == pairs[:2]
    cands = focal_candidates(logits, m=2, alpha=0.05, beta=0.1)
    (i, j), (i2, j2) = pairs[:2]
    want = contrast(logits[i], logits[j], 0.05).masked_fill(~plausibility_mask(logits[i : i + 1], 0.1)[0], -math.inf)
    assert cands.shape == (4, 9) and torch.equal(cands[0], want)
    assert torch.equal(cands[3].isinf(), ~plausibility_mask(logits[j2 : j2 + 1], 0.1)[0])
    single = focal_candidates(logits[:1])
    assert single.shape == (1, 9) and single.argmax() == logits[0].argmax()


def test_fov_boxes_grow_exponentially_around_the_centre_and_clip() -> None:
    boxes = fov_boxes([10, 20, 20, 40], 64, 64, n=4, lam=0.6)
    assert boxes[0] == [10, 20, 20, 40]
    for i, (x0, y0, x1, y1) in enumerate(boxes[:2]):  # inside the image: exact sides, same centre
        assert (x1 - x0, y1 - y0) == pytest.approx((10 * 1.6**i, 20 * 1.6**i))
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((15, 30))
    x0, y0, x1, y1 = boxes[3]  # sides 40.96 x 81.92 would leave the image: cut at the edges
    assert (x0, y0, y1) == (0.0, 0.0, 64.0) and x1 == pytest.approx(15 + 40.96 / 2)
    assert all(0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 64 for b in boxes)
    with pytest.raises(ValueError, match="no area"):
        fov_boxes([5, 5, 5, 9], 64, 64)
    r = random_box(64, 48, torch.Generator().manual_seed(0))
    assert 0 <= r[0] < r[2] <= 64 and 0 <= r[1] < r[3] <= 48 and r[2] - r[0] >= 0.2 * 64


def test_crop_resize_of_the_full_image_is_the_image() -> None:
    img = torch.randn(3, 32, 32)
    crops = crop_resize(img, [[0, 0, 32, 32], [8, 8, 16, 24]], 32)
    assert crops.shape == (2, 3, 32, 32)
    torch.testing.assert_close(crops[0], img)


@pytest.fixture(scope="module")
def tiny():
    cfg = LVLMConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                     text_layers=2, text_heads=2, text_intermediate=64, max_positions=128)  # fmt: skip
    torch.manual_seed(0)
    model = build_lvlm(cfg, 40, image_token_id=4, pad_token_id=0, bos_token_id=1, eos_token_id=2).eval()
    prompt = torch.tensor([[1, *[4] * cfg.image_tokens, 7, 9, 11], [1, *[4] * cfg.image_tokens, 8, 9, 12]])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, prompt, pixels


def test_cached_greedy_equals_no_cache_and_transformers_generate(tiny) -> None:
    model, prompt, pixels = tiny
    kw = dict(max_new_tokens=12, eos_id=2)
    cached = greedy(model, prompt, pixels, **kw)
    assert cached == greedy(model, prompt, pixels, use_cache=False, **kw)
    hf = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), pixel_values=pixels,
                        max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=0)  # fmt: skip
    for row, want in zip(hf[:, prompt.shape[1] :].tolist(), cached, strict=True):
        assert row[: len(want)] == want and (len(want) == 12 or row[len(want)] == 2)


def test_vcd_cached_equals_no_cache_and_reduces_to_greedy_without_contrast(tiny) -> None:
    model, prompt, pixels = tiny
    kw = dict(max_new_tokens=10, eos_id=2)
    cfg = VCDConfig(alpha=1.0, beta=0.1)
    assert vcd(model, prompt, pixels, cfg, **kw) == vcd(model, prompt, pixels, cfg, use_cache=False, **kw)
    assert vcd(model, prompt, pixels, VCDConfig(alpha=0.0, beta=0.0), **kw) == greedy(model, prompt, pixels, **kw)
    # a combine that always takes the second stream decodes the noised image
    from framework.decoding.loop import vcd_noised
    from framework.losses.visual_dependence import noised_pixels

    noisy = vcd_noised(pixels, cfg)
    assert decode(model, prompt, [pixels, noisy], lambda lg: lg[1], **kw) == greedy(model, prompt, noisy, **kw)
    # one noise draw for every image: a prompt decodes the same alone as in a batch (a per-row draw would not)
    assert [vcd(model, prompt[b : b + 1], pixels[b : b + 1], cfg, **kw)[0] for b in range(2)] == vcd(
        model, prompt, pixels, cfg, **kw)  # fmt: skip
    eps = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy, noised_pixels(pixels, 900, noise=eps.expand(2, -1, -1, -1)))


def test_select_beams_keeps_the_best_expansions() -> None:
    scores = torch.tensor([-1.0, -2.0])
    logp = torch.log_softmax(torch.tensor([[0.0, 2.0, 1.0, 0.5], [3.0, 0.0, 0.0, 0.0]]), -1)
    total = (scores[:, None] + logp).flatten()
    alive, finished = select_beams(scores, logp, k=3, eos_id=2)
    ranked = [divmod(int(i), 4) for i in total.argsort(descending=True)]
    want_alive = [(b, t) for b, t in ranked if t != 2]
    n = ranked.index(want_alive[2]) + 1  # expansions looked at until 3 continue
    assert [(b, t) for b, t, _ in alive] == want_alive[:3]
    assert [b for b, _ in finished] == [b for b, t in ranked[:n] if t == 2]
    assert [s for _, _, s in alive] == pytest.approx([float(total[b * 4 + t]) for b, t in want_alive[:3]])


def test_beam_search_with_one_beam_is_greedy_and_cache_changes_nothing(tiny) -> None:
    model, prompt, pixels = tiny
    for b in range(2):
        want = greedy(model, prompt[b : b + 1], pixels[b : b + 1], max_new_tokens=8, eos_id=2)[0]
        got = beam_search(model, prompt[b : b + 1], pixels[b : b + 1], k=1, max_new_tokens=8, eos_id=2)
        assert got == want
        wide = beam_search(model, prompt[b : b + 1], pixels[b : b + 1], k=3, max_new_tokens=8, eos_id=2)
        assert wide == beam_search(model, prompt[b : b + 1], pixels[b : b + 1], k=3, max_new_tokens=8, eos_id=2,
                                   use_cache=False)  # fmt: skip
