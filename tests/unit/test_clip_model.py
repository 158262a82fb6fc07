"""CLIP dual encoder: architecture fingerprint, open_clip initialization, shapes, gradients, causal text readout,
unclamped forward temperature."""

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
    # Behind each bottleneck's zero-initialized bn3 gain the residual branch gets no gradient at first; one step
    # moves the gains, after which every parameter must get gradient.
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad and all(".bn3." in n or ".conv" in n or ".bn1." in n or ".bn2." in n for n in no_grad), no_grad
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    img, txt, scale = model(*_inputs(cfg))
    rankclip_loss(img, txt, scale)["loss"].backward()
    # The token embedding trains only for rows that occur; every other parameter must get gradient.
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], no_grad


# A text tower large enough for sample standard deviations to be within a few percent of the target.
_INIT_CFG = dict(text_width=128, text_layers=4, text_heads=4, vocab_size=2000, context_length=77, embed_dim=96,
                 vision_width=16, vision_heads=4)  # fmt: skip


def test_text_layers_are_drawn_independently() -> None:
    """nn.TransformerEncoder deep-copies one layer; every layer must start with its own draw."""
    torch.manual_seed(0)
    layers = CLIP(tiny_clip_config(**_INIT_CFG)).text.transformer.layers
    drawn = ["self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear1.bias",
             "linear2.weight", "linear2.bias"]  # fmt: skip
    for i in range(len(layers)):
        for j in range(i):
            params_i, params_j = dict(layers[i].named_parameters()), dict(layers[j].named_parameters())
            for name in drawn:
                assert not torch.equal(params_i[name], params_j[name]), (i, j, name)


def test_init_stds_follow_open_clip() -> None:
    """The scales of the module docstring (open_clip's init_parameters of TextTransformer and ModifiedResNet)."""
    torch.manual_seed(0)
    cfg = tiny_clip_config(**_INIT_CFG)
    model = CLIP(cfg)
    width, layers, pool_c = cfg.text_width, cfg.text_layers, cfg.vision_width * 32
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    expected = {
        "text.token_embedding.weight": 0.02,
        "text.positional_embedding": 0.01,
        "text.text_projection.weight": width**-0.5,
        "visual.attnpool.q_proj.weight": pool_c**-0.5,
        "visual.attnpool.k_proj.weight": pool_c**-0.5,
        "visual.attnpool.v_proj.weight": pool_c**-0.5,
        "visual.attnpool.c_proj.weight": pool_c**-0.5,
    }
    for i in range(layers):
        prefix = f"text.transformer.layers.{i}."
        expected |= {
            prefix + "self_attn.in_proj_weight": width**-0.5,
            prefix + "self_attn.out_proj.weight": proj_std,
            prefix + "linear1.weight": (2 * width) ** -0.5,
            prefix + "linear2.weight": proj_std,
        }
    params = dict(model.named_parameters())
    for name, std in expected.items():
        p = params[name].detach()
        # >= 1,000 samples each: the sample std is within 7% (over 3 standard errors) of the target.
        assert p.numel() >= 1000 and float(p.std()) == pytest.approx(std, rel=0.07), name
        assert abs(float(p.mean())) < 4 * std / p.numel() ** 0.5, name
    zero = [
        n for n in params if ".self_attn.in_proj_bias" in n or ".self_attn.out_proj.bias" in n or ".bn3.weight" in n
    ]
    assert len(zero) == 2 * layers + sum(cfg.vision_layers)
    assert all(params[n].eq(0).all() for n in zero)


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


def test_forward_does_not_clamp_the_logit_scale() -> None:
    """The forward returns exp(logit_scale) with its gradient even past the bound: the trainer clamps the
    parameter after each optimizer step instead (tests/unit/test_clip_trainer_loss.py)."""
    model = CLIP(tiny_clip_config())
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    scale = model.scale()
    assert scale.item() == pytest.approx(500.0)
    scale.backward()
    assert model.logit_scale.grad.item() == pytest.approx(500.0)


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
