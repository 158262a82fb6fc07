"""CLIP dual encoder: architecture fingerprint, shapes, gradients, causal text readout, temperature clamp."""

from __future__ import annotations

import math

import pytest
import torch

from framework.losses.contrastive import rankclip_loss
from framework.models.clip.model import CLIP, CLIPConfig, ModifiedResNet, tiny_clip_config


def test_rn50_image_tower_matches_clip_rn50_parameter_count() -> None:
    # OpenAI CLIP RN50 visual tower: 38,316,896 parameters (layers 3-4-6-3, width 64, attention pool to 1024).
    rn50 = ModifiedResNet([3, 4, 6, 3], output_dim=1024, heads=32, input_resolution=224, width=64)
    assert sum(p.numel() for p in rn50.parameters()) == 38_316_896


def _inputs(cfg: CLIPConfig, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, cfg.image_size, cfg.image_size, generator=g)
    tokens = torch.randint(1, cfg.vocab_size, (b, cfg.context_length), generator=g)
    eot = torch.tensor([3, 7, cfg.context_length - 1])[:b]
    return images, tokens, eot


def test_forward_shapes_normalized_and_every_parameter_trains() -> None:
    cfg = tiny_clip_config()
    model = CLIP(cfg)
    img, txt, scale = model(*_inputs(cfg))
    assert img.shape == txt.shape == (3, cfg.embed_dim)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    rankclip_loss(img, txt, scale)["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # The token embedding trains only for rows that occur; every other parameter must get gradient.
    assert no_grad == [], no_grad


def test_text_readout_is_causal_at_the_end_of_text_position() -> None:
    cfg = tiny_clip_config()
    model = CLIP(cfg).eval()
    images, tokens, eot = _inputs(cfg)
    with torch.no_grad():
        before = model.encode_text(tokens, eot)
        changed = tokens.clone()
        changed[0, 4:] = (changed[0, 4:] + 1) % cfg.vocab_size  # after text 0's end-of-text (index 3)
        changed[1, 2] = (changed[1, 2] + 1) % cfg.vocab_size  # before text 1's end-of-text (index 7)
        after = model.encode_text(changed, eot)
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])
    torch.testing.assert_close(after[2], before[2])


def test_logit_scale_is_clamped_at_100_and_stops_gradient() -> None:
    model = CLIP(tiny_clip_config())
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    scale = model.scale()
    assert scale.item() == pytest.approx(100.0)
    scale.backward()
    assert model.logit_scale.grad.item() == 0.0


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="image_size"):
        tiny_clip_config(image_size=30)
    with pytest.raises(ValueError, match="text_heads"):
        tiny_clip_config(text_heads=5)


@pytest.mark.parametrize("text_model", ["clip_text_model", "bert", "gpt2", "roberta"])
def test_hf_text_tower_from_config_reads_only_the_text(text_model: str) -> None:
    """A transformers encoder built from a config: trains, and tokens after EOT (padding) never change the
    embedding, also for bidirectional encoders (the attention mask hides them)."""
    cfg = tiny_clip_config(text_model=text_model)
    model = CLIP(cfg)
    assert type(model.text).__name__ == "HFTextTower"
    images, tokens, eot = _inputs(cfg)
    img, txt, scale = model(images, tokens, eot)
    assert txt.shape == (3, cfg.embed_dim)
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(3))
    rankclip_loss(img, txt, scale)["loss"].backward()
    assert model.text.text_projection.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text.encoder.parameters())
    model.eval()
    with torch.no_grad():
        before = model.encode_text(tokens, eot)
        changed = tokens.clone()
        changed[0, 4:] = (changed[0, 4:] + 1) % cfg.vocab_size  # after text 0's end-of-text (index 3)
        changed[1, 2] = (changed[1, 2] + 1) % cfg.vocab_size  # before text 1's end-of-text
        after = model.encode_text(changed, eot)
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])


def test_unknown_text_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="text_model='nope'"):
        tiny_clip_config(text_model="nope")
