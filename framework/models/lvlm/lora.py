"""LoRA on the LVLM through PEFT: adapters on the language model's linear layers (default: all of them), the
projector fully trained (PEFT ``modules_to_save``), the vision tower frozen; parameter groups for separate
learning rates; export of a merged plain model.

Defaults after the seed's setup (shared/methods/lvlm.md): r 128, alpha 256, dropout 0.05; the projector at its own
learning rate (the trainer's ``projector_lr``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

LANGUAGE_PREFIX = "model.language_model."


@dataclass(kw_only=True, frozen=True)
class LoRAConfig:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    targets: list[str] = field(default_factory=list)
    """Suffixes of the language model's linear layers to adapt (e.g. ``["q_proj", "v_proj"]``); empty = every
    linear layer of the language model."""
    train_projector: bool = True

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA needs r >= 1, alpha > 0, 0 <= dropout < 1; got {self.r}, {self.alpha}, "
                             f"{self.dropout}")  # fmt: skip


def language_linear_names(model: nn.Module, targets: Sequence[str] = ()) -> list[str]:
    """Full names of the language model's ``nn.Linear`` modules ending in one of ``targets`` (all if empty)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(LANGUAGE_PREFIX)]
    if not targets:
        return names
    chosen = [n for n in names if n.rsplit(".", 1)[-1] in set(targets)]
    found = {n.rsplit(".", 1)[-1] for n in chosen}
    missing = [t for t in targets if t not in found]
    if missing:
        known = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ValueError(f"lora.targets {missing} match no linear layer of the language model; known: {known}")
    return chosen


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """The PEFT-wrapped model: only LoRA adapters (and the projector, if ``train_projector``) require grad."""
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=language_linear_names(model, cfg.targets),
                          modules_to_save=["multi_modal_projector"] if cfg.train_projector else None)  # fmt: skip
    return get_peft_model(model, peft_cfg)


def parameter_groups(peft_model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters split into ``lora`` and ``projector`` (for per-group learning rates)."""
    groups: dict[str, list[nn.Parameter]] = {"lora": [], "projector": []}
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            groups["projector" if "multi_modal_projector" in name else "lora"].append(p)
    return groups


def merged_model(peft_model: nn.Module) -> nn.Module:
    """A plain transformers model with the adapters folded into the weights (and the trained projector)."""
    return peft_model.merge_and_unload()
