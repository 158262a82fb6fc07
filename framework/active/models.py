"""Models of the active-learning loop: the task model f, DAO's surrogate pi (another architecture), BMMAL's fusion.

Legend: B = batch, C = classes, E = embedding (penultimate) dim.
No batch norm anywhere: DAO evaluates perturbed copies with ``torch.func.functional_call`` under ``vmap``, and
batch statistics of a 16-example labeled set would make every prediction depend on its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """(conv-relu-avgpool) x 2, flatten -> embedding E, dropout, linear head (f; MC dropout for BALD).

    Average, not max, pooling: the HVPs differentiate the backward again under vmap, which max pooling's backward
    does not support (torch 2.13).
    """

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.25, image_size: int = 8
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.embed_dim = 2 * width * (image_size // 4) ** 2
        self.head = nn.Linear(self.embed_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        return F.avg_pool2d(F.relu(self.conv2(h)), 2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(x)))


class MLP(nn.Module):
    """Flatten, one hidden layer (DAO's surrogate pi: a different architecture from f)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes)
        self.embed_dim = hidden

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(x)))


class LateFusion(nn.Module):
    """BMMAL's model: encoders phi_1 (CNN on the image), phi_2 (MLP on the vector) -> z_1, z_2; fused z = z_1 ⊕ z_2;
    three linear heads C_1, C_2, C_mm. ``forward`` returns the fused head's logits; :meth:`heads` all three."""

    def __init__(
        self, in_channels: int, m2_features: int, num_classes: int, width: int = 16, m2_hidden: int = 32,
        image_size: int = 8,
    ):  # fmt: skip
        super().__init__()
        self.enc1 = SmallCNN(in_channels, num_classes, width, dropout=0.0, image_size=image_size)
        self.enc2 = nn.Sequential(nn.Linear(m2_features, m2_hidden), nn.ReLU())
        d1, d2 = self.enc1.embed_dim, m2_hidden
        self.head1, self.head2 = nn.Linear(d1, num_classes), nn.Linear(d2, num_classes)
        self.head_mm = nn.Linear(d1 + d2, num_classes)
        self.dims = (d1, d2)
        self.embed_dim = d1 + d2

    def encode(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.enc1.embed(x1), self.enc2(x2)

    def embed(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.encode(x1, x2), dim=1)

    def heads(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z1, z2 = self.encode(x1, x2)
        return self.head1(z1), self.head2(z2), self.head_mm(torch.cat([z1, z2], dim=1))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.heads(x1, x2)[2]

    def loss(self, x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean of the three heads' cross-entropies (thesis ch. 3)."""
        return sum(F.cross_entropy(h, y) for h in self.heads(x1, x2)) / 3


class Embedder(nn.Module):
    """A model's ``embed`` as a module (e.g. MMCSAL's encoder from this file's CNN; the head stays unused)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.model.embed(*xs)


def modality_encoders(pool_shape: tuple[tuple[int, ...], ...], width: int = 16, m2_hidden: int = 32):
    """One encoder per modality of a two-modality pool, the late-fusion model's: CNN on the image, MLP on the
    vector (MMCSAL's towers)."""
    first, second = pool_shape
    cnn = SmallCNN(first[0], 1, width, dropout=0.0, image_size=first[-1])
    return Embedder(cnn), nn.Sequential(nn.Linear(second[0], m2_hidden), nn.ReLU())


def build_model(arch: str, pool_shape: tuple[tuple[int, ...], ...], num_classes: int, width: int = 16) -> nn.Module:
    """``cnn`` / ``mlp`` on the first modality, ``late_fusion`` on two."""
    first = pool_shape[0]
    if arch == "cnn":
        return SmallCNN(first[0], num_classes, width, image_size=first[-1])
    if arch == "mlp":
        return MLP(int(torch.tensor(first).prod()), num_classes)
    if arch == "late_fusion":
        if len(pool_shape) != 2:
            raise ValueError(f"late_fusion needs a two-modality pool, got {len(pool_shape)} modalities")
        return LateFusion(first[0], pool_shape[1][0], num_classes, width, image_size=first[-1])
    raise ValueError(f"unknown model arch {arch!r}; choose cnn, mlp or late_fusion")
