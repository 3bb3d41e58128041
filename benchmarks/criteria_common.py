"""Shared code of the criteria benchmarks (``criteria_oracle.py``, ``criteria_oneshot.py``).

* MNIST from ``$PRUNEKIT_DATA`` (through :func:`prunekit.data.load_dataset`; nothing is hard-coded here).
* LeNet-300-100 and LeNet-5-Caffe trained with a given seed, cached as safetensors under
  ``$PRUNEKIT_BENCH_CACHE`` (default ``/tmp/prunekit-bench-cache``) so both scripts reuse the same weights.
* The criteria compared, the units (hidden layers) of each net, a cross-entropy ``loss_fn`` and result writers
  (``criteria_<name>.json`` + ``.md``; the layout of a section follows ``_common.render_markdown``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, _atomic_write, env_info, render_document

from prunekit.data import load_dataset
from prunekit.data.base import TensorDataset
from prunekit.models import build_model
from prunekit.scoring import (
    FPGM,
    LDA,
    OBD,
    OBS,
    AbstractScorer,
    ActivationCorrelation,
    ActivationEntropy,
    ActivationMean,
    ActivationVariance,
    APoZ,
    Magnitude,
    NearZero,
    RandomScore,
    Taylor,
    TaylorActivation,
    UnitNorm,
    WeightCosine,
)

CACHE_DIR = Path(os.environ.get("PRUNEKIT_BENCH_CACHE", "/tmp/prunekit-bench-cache"))


@dataclass(frozen=True)
class NetSpec:
    name: str  # registered model name
    label: str
    epochs: int
    lr: float
    units: tuple[str, ...]  # fqns of the hidden layers whose output units (rows / filters) are pruned
    unstructured: tuple[str, ...]  # fqns pruned by the unstructured part (every weight layer but the output one)
    conv_relu: bool  # whether a ReLU follows the unit layers (activation criteria then use nonlinearity=relu)


NETS: dict[str, NetSpec] = {
    "lenet_300_100": NetSpec("lenet_300_100", "LeNet-300-100", 8, 1e-3, ("1", "3"), ("1", "3"), True),
    "lenet5_caffe": NetSpec(
        "lenet5_caffe",
        "LeNet-5-Caffe",
        3,
        1e-3,
        ("features.0", "features.3"),
        ("features.0", "features.3", "classifier.1"),
        False,  # Caffe's LeNet-5 has no ReLU after the convolutions (the zoo default)
    ),
}
LAYER_LABEL = {
    ("lenet_300_100", "1"): "fc1 (300)",
    ("lenet_300_100", "3"): "fc2 (100)",
    ("lenet5_caffe", "features.0"): "conv1 (20)",
    ("lenet5_caffe", "features.3"): "conv2 (50)",
    ("lenet5_caffe", "classifier.1"): "fc1 (500)",
}


def setup_threads(n: int = 2) -> None:
    torch.set_num_threads(n)


def mnist(split: str) -> TensorDataset:
    if not os.environ.get("PRUNEKIT_DATA"):
        raise SystemExit("set PRUNEKIT_DATA to the directory holding mnist/ (see benchmarks/README.md)")
    return load_dataset("mnist", split, download=False)


def tensors(ds: TensorDataset) -> tuple[Tensor, Tensor]:
    x, y = ds.get(slice(0, len(ds)))
    return x.float().contiguous(), y


def ce_loss(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, bs: int = 2000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over ``x, y``."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), bs):
        out = model(x[i : i + bs])
        loss += float(F.cross_entropy(out, y[i : i + bs], reduction="sum"))
        correct += int((out.argmax(1) == y[i : i + bs]).sum())
    return loss / len(x), correct / len(x)


def train_epochs(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float,
    seed: int,
    bs: int = 128,
    after_step: Callable[[], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Adam, shuffled mini-batches from a seeded generator; ``after_step`` runs after every optimizer step."""
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
    model.eval()


def build(net: str) -> nn.Module:
    return build_model({"name": net})


def trained(net: str, seed: int, xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """The net trained with ``seed`` (from the cache if there); returns (model, info incl. dense test accuracy)."""
    from safetensors.torch import load_file, save_file

    spec = NETS[net]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"{net}-seed{seed}-ep{spec.epochs}.safetensors"
    torch.manual_seed(seed)
    model = build(net)
    t0 = time.perf_counter()
    cached = path.exists()
    if cached:
        model.load_state_dict(load_file(str(path)))
    else:
        train_epochs(model, xtr, ytr, spec.epochs, spec.lr, seed)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    model.eval()
    loss, acc = evaluate(model, xte, yte)
    info = {
        "seed": seed,
        "epochs": spec.epochs,
        "optimizer": f"Adam lr {spec.lr}, batch 128",
        "test_loss": loss,
        "test_acc": acc,
        "train_seconds": None if cached else round(time.perf_counter() - t0, 1),
        "cache": str(path),
    }
    return model, info


def modules_of(model: nn.Module, fqns: Sequence[str]) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    return {f: mods[f] for f in fqns}


# ---------------------------------------------------------------------------------------------------------
# Criteria
# ---------------------------------------------------------------------------------------------------------


def unit_criteria(relu: bool) -> dict[str, AbstractScorer]:
    """Every registered criterion (plus the Molchanov 2019 group/squared variants of Taylor), for Channel(0)."""
    nl = "relu" if relu else "none"
    return {
        "magnitude (L1 of row)": Magnitude(),
        "unit_norm (L2)": UnitNorm(),
        "fpgm": FPGM(),
        "weight_cosine": WeightCosine(),
        "random": RandomScore(),
        "taylor (element, sum)": Taylor(),
        "taylor (group=unit, M19)": Taylor(group="unit"),
        "taylor_activation (abs_mean, M17)": TaylorActivation(),
        "taylor_activation (squared, M19 gate)": TaylorActivation(formulation="squared"),
        "obd": OBD(),
        "obs": OBS(),
        "apoz": APoZ(nonlinearity=nl),
        "near_zero": NearZero(nonlinearity=nl),
        "activation_mean": ActivationMean(nonlinearity=nl),
        "activation_variance": ActivationVariance(nonlinearity=nl),
        "activation_entropy": ActivationEntropy(nonlinearity=nl),
        "activation_correlation": ActivationCorrelation(nonlinearity=nl),
        "lda": LDA(nonlinearity=nl),
    }


def element_criteria() -> dict[str, AbstractScorer]:
    """Criteria with genuine per-weight scores (the others spread a unit's score evenly: ties under Unstructured)."""
    return {
        "magnitude": Magnitude(),
        "random": RandomScore(),
        "taylor": Taylor(),
        "obd": OBD(),
        "obs": OBS(),
    }


def calibration(xtr: Tensor, ytr: Tensor, n_batches: int = 10, bs: int = 128, seed: int = 1234) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(xtr), generator=g)[: n_batches * bs]
    return [(xtr[idx[i : i + bs]], ytr[idx[i : i + bs]]) for i in range(0, len(idx), bs)]


# ---------------------------------------------------------------------------------------------------------
# Result files
# ---------------------------------------------------------------------------------------------------------


def render(sec: dict[str, Any]) -> str:
    return render_document(sec, "the script below")


def write_results(stem: str, sec: dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    sec.setdefault("meta", env_info())
    _atomic_write(RESULTS_DIR / f"{stem}.json", json.dumps(sec, indent=2) + "\n")
    _atomic_write(RESULTS_DIR / f"{stem}.md", render(sec))
