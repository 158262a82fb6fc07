"""A LLaVA-architecture LVLM built from a config, randomly initialized (no model hub): transformers'
``LlavaForConditionalGeneration`` with a CLIP ViT vision tower, LLaVA-1.5's two-layer GELU projector and a small
Llama-family language model.

Legend: P = image patches = (image_size / patch_size)^2, D_v / D_t = vision / text width.
The image placeholder token of a prompt is expanded by the caller into P copies of ``image_token_id``
(framework/data/lvlm/chat.py); the vision feature is the last layer's patch tokens (CLS dropped: LLaVA's
``default`` strategy). Plain ``nn.Module``; LoRA and ZeRO are applied from outside.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(kw_only=True, frozen=True)
class LVLMConfig:
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 352
    max_positions: int = 256
    """Longest sequence (P image tokens included)."""

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for w, h, name in ((self.vision_width, self.vision_heads, "vision"), (self.text_width, self.text_heads,
                                                                              "text")):  # fmt: skip
            if w % h:
                raise ValueError(f"{name}_width {w} is not divisible by {name}_heads {h}")
        if self.max_positions <= self.image_tokens:
            raise ValueError(
                f"max_positions {self.max_positions} leaves no room after {self.image_tokens} image tokens"
            )

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_lvlm(cfg: LVLMConfig, vocab_size: int, *, image_token_id: int, pad_token_id: int, bos_token_id: int,
               eos_token_id: int) -> nn.Module:  # fmt: skip
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_width,
        intermediate_size=4 * cfg.vision_width,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_width,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_width,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         projector_hidden_act="gelu", vision_feature_layer=-1,
                         vision_feature_select_strategy="default", image_seq_length=cfg.image_tokens)  # fmt: skip
    config.pad_token_id, config.bos_token_id, config.eos_token_id = pad_token_id, bos_token_id, eos_token_id
    return LlavaForConditionalGeneration(config)


def lvlm_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The three parts LoRA / learning rates address: vision tower, projector, language model (+ its head)."""
    inner = model.model
    return {"vision": inner.vision_tower, "projector": inner.multi_modal_projector,
            "language": nn.ModuleList([inner.language_model, model.lm_head])}  # fmt: skip
