"""Visual-dependence re-weighting on hand-made probabilities: the noise schedule against its closed form, d and its
classes, the weights (mean 1 per response, the EOS clamp, tau = 0 is MLE), the loss, the data filter, and d from a
real (tiny) LVLM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from framework.losses.visual_dependence import (
    IGNORE,
    batch_dependence,
    filter_by_dependence,
    noised_pixels,
    response_ids,
    reweighting_active,
    token_classes,
    token_weights,
    vcd_alphas_cumprod,
    visual_dependence,
    weighted_nll,
)


def test_noise_schedule_closed_form() -> None:
    abar = vcd_alphas_cumprod()
    prod = 1.0
    for i in range(1000):
        x = -6 + 12 * i / 999
        prod *= 1 - (1 / (1 + math.exp(-x)) * (5e-3 - 1e-5) + 1e-5)
        if i in (0, 1, 499, 899, 900, 999):
            assert float(abar[i]) == pytest.approx(prod, rel=1e-12)
    v = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    out = noised_pixels(v, 900, torch.Generator().manual_seed(0))
    eps = torch.randn(v.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(out, abar[900].sqrt() * v + (1 - abar[900]).sqrt() * eps)
    assert float(abar[900]) == pytest.approx(0.1331, abs=1e-4)  # T = 900: the image is scaled by sqrt = 0.36
    with pytest.raises(ValueError, match="noise step"):
        noised_pixels(v, 1000)


def test_dependence_and_classes_by_hand() -> None:
    p = torch.tensor([0.8, 0.2, 0.5, 1e-30, 0.4])
    q = torch.tensor([0.2, 0.8, 0.5, 0.9, 0.3])
    d = visual_dependence(p.log(), q.log())
    torch.testing.assert_close(d, torch.tensor([0.75, -0.75, 0.0, -1.0, 0.25]))
    assert token_classes(torch.tensor([0.25, 0.2499, -0.25, -0.3, 0.9, 0.0])).tolist() == [1, 0, -1, -1, 1, 0]


def _labels() -> torch.Tensor:
    # sample 0: two responses [5, 6, EOS=2] and [7, EOS]; sample 1: one response [8, 9] without EOS
    return torch.tensor([[IGNORE, 5, 6, 2, IGNORE, 7, 2], [IGNORE, IGNORE, 8, 9, IGNORE, IGNORE, IGNORE]])


def test_response_ids() -> None:
    assert response_ids(_labels()).tolist() == [[-1, 0, 0, 0, -1, 1, 1], [-1, -1, 2, 2, -1, -1, -1]]


def test_weights_by_hand_mean_one_eos_clamp_and_tau_zero() -> None:
    labels = _labels()
    d = torch.tensor([[0.0, -0.5, 0.5, 0.0, 0.0, -1.0, 0.0], [0.0, 0.0, 0.3, -0.6, 0.0, 0.0, 0.0]])
    ones = token_weights(d, labels, eos_id=2, tau=0.0)
    assert ones.tolist() == (labels != IGNORE).float().tolist()
    w = token_weights(d, labels, eos_id=2, tau=0.5, variant="neg")
    e = math.exp(0.25)
    # response 0: w_neg = [0.5, 0, 0] -> 3 softmax(0.5 w); its EOS weight 3/(e + 2) < 1 is raised to 1
    assert w[0, 1:4].tolist() == pytest.approx([3 * e / (e + 2), 3 / (e + 2), 1.0])
    # response 1: w_neg = [1, 0]: 2 e^.5/(e^.5 + 1) and the EOS 2/(e^.5 + 1) -> 1
    assert w[0, 5:7].tolist() == pytest.approx([2 * math.exp(0.5) / (math.exp(0.5) + 1), 1.0])
    # response 2 has no EOS: its weights keep mean 1 exactly
    assert w[1, 2:4].tolist() == pytest.approx([2 / (1 + math.exp(0.3)), 2 * math.exp(0.3) / (1 + math.exp(0.3))])
    assert float(w[1, 2:4].mean()) == pytest.approx(1.0) and w[labels == IGNORE].abs().sum() == 0
    pos = token_weights(d, labels, eos_id=2, tau=0.5, variant="pos")
    assert pos[0, 2] > 1 > pos[0, 1]  # w_pos emphasizes the image-positive token instead
    with pytest.raises(ValueError, match="variant"):
        token_weights(d, labels, 2, variant="both")  # type: ignore[arg-type]


def test_weighted_nll_is_mle_at_unit_weights() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=g)
    labels = _labels()
    mle = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    torch.testing.assert_close(weighted_nll(logits, labels), mle)
    ones = token_weights(torch.randn(2, 7, generator=g), labels, eos_id=2, tau=0.0)
    torch.testing.assert_close(weighted_nll(logits, labels, ones), mle)
    w = token_weights(torch.randn(2, 7, generator=g).clamp(-1, 1), labels, eos_id=2, tau=2.0)
    assert not torch.allclose(weighted_nll(logits, labels, w), mle)


def test_filter_drops_exactly_the_intended_samples() -> None:
    scores = [3.0, 1.0, 2.0, 5.0, 4.0, 0.0, 6.0, 7.0, 9.0, 8.0]
    assert filter_by_dependence(scores, drop_top=0.2, drop_bottom=0.1) == [0, 1, 2, 3, 4, 6, 7]
    assert filter_by_dependence(scores) == list(range(10))
    assert filter_by_dependence([1.0, 1.0, 1.0, 1.0], drop_bottom=0.5) == [2, 3]  # ties: lower index first
    with pytest.raises(ValueError, match="drop fractions"):
        filter_by_dependence(scores, drop_top=0.6, drop_bottom=0.6)
    assert not reweighting_active(49, 100) and reweighting_active(50, 100)


def test_dependence_of_a_real_lvlm_is_zero_when_it_ignores_the_image() -> None:
    from framework.data.clip.image_ops import preprocess
    from framework.data.lvlm.chat import collate, encode_conversation
    from framework.data.lvlm.scenes import render_scene
    from framework.data.lvlm.tokenizer import scene_tokenizer
    from framework.models.lvlm.model import LVLMConfig, build_lvlm

    tok = scene_tokenizer()
    cfg = LVLMConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=32,
                     text_layers=1, text_heads=2, text_intermediate=64, max_positions=128)  # fmt: skip
    torch.manual_seed(0)
    model = build_lvlm(cfg, len(tok), image_token_id=4, pad_token_id=0, bos_token_id=1, eos_token_id=2).train()
    scenes = [render_scene(0, "train", i) for i in range(2)]
    batch = collate([encode_conversation(s.conversations, tok, cfg.image_tokens, 128) for _, s in scenes], 0)
    pixels = torch.stack([preprocess(img, cfg.image_size) for img, _ in scenes])
    d, labels = batch_dependence(model, batch, pixels, generator=torch.Generator().manual_seed(0))
    assert model.training and d.shape == labels.shape == (2, batch["input_ids"].shape[1] - 1)
    sup = labels != IGNORE
    assert d[sup].abs().max() > 1e-4 and d.abs().max() <= 1 and d[~sup].abs().sum() == 0
    with torch.no_grad():  # a projector that outputs zeros: the image cannot change any probability
        last = model.model.multi_modal_projector.linear_2
        last.weight.zero_()
        last.bias.zero_()
    d0, _ = batch_dependence(model, batch, pixels, generator=torch.Generator().manual_seed(0))
    assert d0.abs().max() == 0
