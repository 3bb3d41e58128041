"""The embedded demo: train an MLP on scikit-learn's bundled digits, prune it gradually to 90 %, fine-tune.

Needs no download: the 1,797 8x8 digit images ship inside scikit-learn.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunekit.allocation import Global
from prunekit.models import mlp
from prunekit.pruner import Pruner
from prunekit.recipe import PruneRecipe
from prunekit.report import SparsityReport, sparsity_report
from prunekit.schedules import Polynomial

MODEL_SPEC: dict[str, Any] = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [256, 128], "num_classes": 10}}


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn digits as float tensors in [0, 1], split per class (stratified) with a fixed seed."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0  # (1797, 64)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    test_idx = []
    for c in range(10):
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_idx.append(idx[: round(len(idx) * test_fraction)])
    test = torch.cat(test_idx)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[test] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


def _batches(x: Tensor, y: Tensor, batch: int, g: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    perm = torch.randperm(len(x), generator=g)
    for i in range(0, len(x), batch):
        j = perm[i : i + batch]
        yield x[j], y[j]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return acc


@dataclass
class DemoResult:
    dense_accuracy: float
    pruned_accuracy: float
    dense: SparsityReport
    pruned: SparsityReport
    seconds: float
    pruned_model: nn.Module = field(repr=False)
    recipe: PruneRecipe = field(repr=False)
    pruner_state: dict[str, Any] = field(default_factory=dict, repr=False)


def run_demo(
    sparsity: float = 0.9,
    dense_epochs: int = 30,
    prune_epochs: int = 15,
    finetune_epochs: int = 15,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Dense training, then gradual (cubic) global magnitude pruning to ``sparsity`` while training, then fine-tuning."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = load_digits_split(seed)
    model = mlp(**MODEL_SPEC["kwargs"])
    g = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    steps_per_epoch = -(-len(xtr) // batch_size)

    def train(m: nn.Module, epochs: int, desc: str, pruner: Pruner | None = None) -> None:
        opt = torch.optim.Adam(m.parameters(), lr=lr)
        if pruner is not None:
            pruner.attach(m, opt)
        for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False):
            for xb, yb in _batches(xtr, ytr, batch_size, g):
                opt.zero_grad(set_to_none=True)
                loss_fn(m(xb), yb).backward()
                opt.step()
                if pruner is not None:
                    pruner.step()

    train(model, dense_epochs, "dense training")
    dense_acc = accuracy(model, xte, yte)
    dense_rep = sparsity_report(model, xte[:1])

    pruned = copy.deepcopy(model)
    end = prune_epochs * steps_per_epoch
    recipe = PruneRecipe(
        sparsity=sparsity,
        allocator=Global(),
        schedule=Polynomial(begin=0, end=end, every=max(1, steps_per_epoch // 2)),
    )
    pruner = Pruner(recipe)
    train(pruned, prune_epochs + finetune_epochs, "gradual pruning + fine-tuning", pruner)
    pruned_acc = accuracy(pruned, xte, yte)
    pruned_rep = sparsity_report(pruned, xte[:1])
    return DemoResult(dense_acc, pruned_acc, dense_rep, pruned_rep, time.perf_counter() - t0, pruned, recipe, pruner.state_dict())
