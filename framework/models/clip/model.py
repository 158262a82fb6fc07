"""CLIP dual encoder trained from scratch: CLIP's modified ResNet (attention pooling) + causal text transformer.

Legend: B = batch, H/W = image size, L = context length, D = width, E = shared embedding dim (1024 for RN50).
Plain ``nn.Module``s; ZeRO/DDP are applied from outside.

Modified ResNet (Radford et al. 2021): a 3-convolution stem with average pooling instead of max pooling,
anti-aliased strided bottlenecks (stride by average pooling before the last 1x1 conv), and a multi-head attention
pooling head whose query is the mean of the final feature map. RN50 = layers (3, 4, 6, 3), width 64.

Initialization follows open_clip (``ModifiedResNet.init_parameters``, ``TextTransformer.init_parameters``, from
OpenAI's CLIP), every layer drawn independently; ``D`` = text width, ``n`` = text layers, ``C`` = attention-pool
channels (vision_width * 32):

==================================================  ===============================
token embedding                                     N(0, 0.02)
text positional embedding                           N(0, 0.01)
attention in-projection (q, k, v), per layer        N(0, D^-0.5), bias 0
attention out-projection, per layer                 N(0, D^-0.5 * (2n)^-0.5), bias 0
MLP c_fc (D -> 4D), per layer                       N(0, (2D)^-0.5), bias PyTorch default
MLP c_proj (4D -> D), per layer                     N(0, D^-0.5 * (2n)^-0.5), bias PyTorch default
text projection                                     N(0, D^-0.5)
attention pool q/k/v/c_proj weights                 N(0, C^-0.5), biases PyTorch default
attention pool positional embedding                 N(0, 1) * C^-0.5
last BatchNorm (bn3) gain of every bottleneck       0 (each residual branch starts as zero)
other convolutions, BatchNorm, LayerNorm            PyTorch defaults
==================================================  ===============================

The Hugging Face text towers (``text_model`` other than builtin) keep their library's own initialization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(kw_only=True, slots=True)
class CLIPConfig:
    image_size: int = 224
    """Input resolution (a multiple of 32)."""
    vision_layers: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    """Bottlenecks per stage; [3, 4, 6, 3] is RN50."""
    vision_width: int = 64
    """Stem/first-stage width; the attention pool sees vision_width * 32 channels."""
    vision_heads: int = 32
    """Heads of the attention pooling head (RN50: 32)."""
    embed_dim: int = 1024
    """Shared image-text embedding dimension."""
    vocab_size: int = 49408
    """Text vocabulary size."""
    context_length: int = 77
    """Maximum text tokens."""
    text_width: int = 512
    """Text transformer width."""
    text_layers: int = 12
    """Text transformer layers."""
    text_heads: int = 8
    """Text transformer heads."""
    text_model: str = "builtin"
    """Text tower: ``builtin`` (CLIP's causal transformer) or a Hugging Face transformers ``model_type`` (e.g.
    ``clip_text_model``, ``bert``, ``gpt2``, ``roberta``) built from a config with the text_* sizes above, randomly
    initialized (trained from scratch like the builtin tower; no hub download)."""
    init_logit_scale: float = math.log(1 / 0.07)
    """Initial log(1/temperature)."""
    max_logit_scale: float = math.log(100.0)
    """Upper bound of the learnable log(1/temperature): the trainer clamps the parameter to [0, this] after every
    optimizer step (open_clip: ln 100)."""

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if len(self.vision_layers) != 4 or min(self.vision_layers) < 1:
            raise ValueError(f"vision_layers must be 4 positive counts, got {self.vision_layers}")
        if (self.vision_width * 32) % self.vision_heads:
            raise ValueError(
                f"vision_width*32={self.vision_width * 32} is not divisible by vision_heads={self.vision_heads}"
            )
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width={self.text_width} is not divisible by text_heads={self.text_heads}")
        if self.text_model != "builtin":
            from transformers import CONFIG_MAPPING

            if self.text_model not in CONFIG_MAPPING:
                raise ValueError(
                    f"text_model={self.text_model!r} is neither 'builtin' nor a transformers model_type "
                    "(e.g. clip_text_model, bert, gpt2, roberta)"
                )


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Anti-aliased stride: average pool, then the 1x1 expansion (instead of a strided conv).
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample: nn.Module = nn.Identity()
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return F.relu(out + self.downsample(x))


class AttentionPool2d(nn.Module):
    """One multi-head attention over [mean token, HW tokens] + positions; the output is the mean token's.

    As in CLIP, ``c_proj`` is the attention's output projection (no separate out-projection before it).
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(torch.randn(spatial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C = x_BCHW.shape[:2]
        H = self.num_heads
        tokens_BTC = x_BCHW.flatten(2).transpose(1, 2)
        tokens_BTC = torch.cat([tokens_BTC.mean(1, keepdim=True), tokens_BTC], dim=1) + self.positional_embedding
        q_BH1d = self.q_proj(tokens_BTC[:, :1]).view(B, 1, H, C // H).transpose(1, 2)
        k_BHTd = self.k_proj(tokens_BTC).view(B, -1, H, C // H).transpose(1, 2)
        v_BHTd = self.v_proj(tokens_BTC).view(B, -1, H, C // H).transpose(1, 2)
        pooled_BH1d = F.scaled_dot_product_attention(q_BH1d, k_BHTd, v_BHTd)
        return self.c_proj(pooled_BH1d.transpose(1, 2).reshape(B, C))


class ModifiedResNet(nn.Module):
    def __init__(self, layers: list[int], output_dim: int, heads: int, input_resolution: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AvgPool2d(2),
        )  # fmt: skip
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)
        self.init_parameters()

    def init_parameters(self) -> None:
        """open_clip's ``ModifiedResNet.init_parameters`` (see the module docstring)."""
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        x = self.stem(x_BCHW)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class TextTransformer(nn.Module):
    """Pre-LN causal transformer; the sequence is read out at each text's end-of-text position."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context_length, cfg.text_width) * 0.01)
        layer = nn.TransformerEncoderLayer(
            cfg.text_width, cfg.text_heads, 4 * cfg.text_width, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.transformer = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        self.init_parameters()

    def init_parameters(self) -> None:
        """open_clip's ``TextTransformer.init_parameters`` (see the module docstring), every layer drawn anew.

        ``nn.TransformerEncoder`` deep-copies one layer, so all layers start identical: each is re-drawn here
        (PyTorch's default for what open_clip leaves at its default, then open_clip's scales).
        """
        width, layers = self.ln_final.normalized_shape[0], len(self.transformer.layers)
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in self.transformer.layers:
            for module in (block.linear1, block.linear2, block.norm1, block.norm2):
                module.reset_parameters()
            nn.init.normal_(block.self_attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.self_attn.in_proj_bias)  # nn.MultiheadAttention's own bias init, as in open_clip
            nn.init.normal_(block.self_attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.self_attn.out_proj.bias)
            nn.init.normal_(block.linear1.weight, std=fc_std)  # open_clip's mlp.c_fc
            nn.init.normal_(block.linear2.weight, std=proj_std)  # open_clip's mlp.c_proj
        nn.init.normal_(self.text_projection.weight, std=width**-0.5)

    def forward(self, tokens_BL: torch.Tensor, eot_index_B: torch.Tensor) -> torch.Tensor:
        L = tokens_BL.shape[1]
        x = self.token_embedding(tokens_BL) + self.positional_embedding[:L]
        causal = torch.full((L, L), float("-inf"), device=x.device).triu(1)
        x = self.ln_final(self.transformer(x, mask=causal))
        return self.text_projection(x[torch.arange(x.shape[0], device=x.device), eot_index_B])


class HFTextTower(nn.Module):
    """A Hugging Face transformers encoder built from a config (``cfg.text_model`` = its model_type), read at EOT.

    Positions after EOT are masked out (``attention_mask``), so bidirectional encoders (BERT) see only the text;
    causal ones (GPT-2, CLIP's text model) would not look ahead anyway. ``max_position_embeddings`` gets 2 extra
    slots because RoBERTa-style models start positions after the padding index. Special ids follow both of our
    tokenizers (pad 0, SOT = vocab_size - 2, EOT = vocab_size - 1); the readout uses ``eot_index_B`` regardless.
    """

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        hf_cfg = AutoConfig.for_model(
            cfg.text_model, vocab_size=cfg.vocab_size, hidden_size=cfg.text_width,
            num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
            intermediate_size=4 * cfg.text_width, max_position_embeddings=cfg.context_length + 2,
            pad_token_id=0, bos_token_id=cfg.vocab_size - 2, eos_token_id=cfg.vocab_size - 1,
        )  # fmt: skip
        self.encoder = AutoModel.from_config(hf_cfg)
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)

    def forward(self, tokens_BL: torch.Tensor, eot_index_B: torch.Tensor) -> torch.Tensor:
        positions_L = torch.arange(tokens_BL.shape[1], device=tokens_BL.device)
        mask_BL = (positions_L[None, :] <= eot_index_B[:, None]).long()
        x = self.encoder(input_ids=tokens_BL, attention_mask=mask_BL).last_hidden_state
        return self.text_projection(x[torch.arange(x.shape[0], device=x.device), eot_index_B])


class CLIP(nn.Module):
    """Returns L2-normalized image and text embeddings and the logit scale exp(``logit_scale``).

    ``logit_scale`` is not clamped here: as in open_clip, the trainer clamps the parameter itself to
    [0, ``max_logit_scale``] after every optimizer step (:meth:`Engine.clamp_param_`), so the gradient never
    vanishes at the bound and the parameter cannot drift past it.
    """

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = ModifiedResNet(
            cfg.vision_layers, cfg.embed_dim, cfg.vision_heads, cfg.image_size, cfg.vision_width
        )
        self.text = TextTransformer(cfg) if cfg.text_model == "builtin" else HFTextTower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))

    def encode_image(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images_BCHW), dim=-1)

    def encode_text(self, tokens_BL: torch.Tensor, eot_index_B: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens_BL, eot_index_B), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp()

    def forward(
        self, images_BCHW: torch.Tensor, tokens_BL: torch.Tensor, eot_index_B: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images_BCHW), self.encode_text(tokens_BL, eot_index_B), self.scale()


def tiny_clip_config(**overrides: object) -> CLIPConfig:
    """A small CLIP for tests and CPU smoke runs (same architecture, tiny sizes)."""
    base = dict(image_size=32, vision_layers=[1, 1, 1, 1], vision_width=8, vision_heads=4, embed_dim=32,
                vocab_size=100, context_length=16, text_width=32, text_layers=2, text_heads=4)  # fmt: skip
    base.update(overrides)
    return CLIPConfig(**base)  # type: ignore[arg-type]
