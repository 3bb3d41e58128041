"""Tiny deterministic fixture models. Each docstring names the topology it exercises."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def arange_init_(model: nn.Module) -> nn.Module:
    """Deterministic, distinct weights: each parameter gets a scaled, sign-alternating arange (no RNG)."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            n = p.numel()
            v = (torch.arange(n, dtype=torch.float32) + 1 + i) / (n + i)
            sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
            p.copy_((v * sign).reshape(p.shape))
    return model


class TinyMLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear: fully connected layers of different fan-in (global vs layer-wise)."""

    def __init__(self, d_in: int = 16, h1: int = 12, h2: int = 8, d_out: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, d_out)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))
        return out


class TinyConvNet(nn.Module):
    """Conv2d-BN-ReLU-Conv2d-ReLU-pool-Flatten-Linear: conv weights (4-D), BatchNorm buffers, flatten into linear."""

    def __init__(self, c_in: int = 3, c1: int = 8, c2: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(c2 * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        out: Tensor = self.fc(x.flatten(1))
        return out


class TiedEmbeddingLM(nn.Module):
    """Embedding whose weight is tied to the output head: shared tensors must be saved once and restored tied."""

    def __init__(self, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: Tensor) -> Tensor:
        out: Tensor = self.head(torch.relu(self.proj(self.emb(idx))))
        return out
