"""Sparsity reports: per-layer and global sparsity, parameter counts, dense vs effective FLOPs, and size.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one example input. The *effective* FLOPs of a
masked layer are its dense FLOPs times the density of its weight (for linear and convolution layers the
multiply-adds scale with the number of non-zero weights); unmasked layers count in full.

Size: dense = every parameter and buffer (masks excluded) at its dtype; compressed = for masked tensors the
kept values plus a one-bit-per-element bitmap, other tensors dense.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from prunekit import masks as M


@dataclass
class LayerStat:
    name: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    dense_flops: int = 0
    effective_flops: int = 0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.params if self.params else 0.0


@dataclass
class SparsityReport:
    layers: list[LayerStat] = field(default_factory=list)
    total_params: int = 0
    total_nonzero: int = 0
    masked_params: int = 0
    masked_nonzero: int = 0
    dense_flops: int | None = None
    effective_flops: int | None = None
    dense_bytes: int = 0
    compressed_bytes: int = 0

    @property
    def sparsity(self) -> float:
        """Fraction of all parameters that are zero."""
        return 1.0 - self.total_nonzero / self.total_params if self.total_params else 0.0

    @property
    def masked_sparsity(self) -> float:
        """Fraction of the masked (targeted) tensors' elements that are pruned."""
        return 1.0 - self.masked_nonzero / self.masked_params if self.masked_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sparsity"] = self.sparsity
        d["masked_sparsity"] = self.masked_sparsity
        for layer, row in zip(self.layers, d["layers"], strict=True):
            row["sparsity"] = layer.sparsity
        return d

    def to_markdown(self) -> str:
        lines = ["| layer | shape | params | nonzero | sparsity |", "|---|---|---:|---:|---:|"]
        for s in self.layers:
            lines.append(f"| {s.name} | {'x'.join(map(str, s.shape))} | {s.params} | {s.nonzero} | {s.sparsity:.2%} |")
        lines.append(f"| **all parameters** | | {self.total_params} | {self.total_nonzero} | {self.sparsity:.2%} |")
        if self.dense_flops is not None:
            lines.append("")
            lines.append(f"FLOPs dense {self.dense_flops:,} -> effective {self.effective_flops:,}")
        lines.append(f"size dense {self.dense_bytes:,} B -> compressed {self.compressed_bytes:,} B")
        return "\n".join(lines)


def _cpu_sdpa_flops(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (what ``F.scaled_dot_product_attention`` runs on
    CPU), which ``FlopCounterMode`` has no formula for: ``2*B*H*L*S*(E + Ev)`` as for its CUDA kernels."""
    return int(sdpa_flop_count(q, k, v))


_CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_flops(model: nn.Module, example: Any) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """(dense FLOPs, effective FLOPs, {masked tensor key: (dense, effective)}) for one forward on ``example``."""
    per: dict[str, list[int]] = {}
    owners: dict[int, list[M.MaskedParam]] = {}
    for mp in M.masked_params(model):
        owners.setdefault(id(mp.module), []).append(mp)
    handles = []
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_SDPA)
    start: dict[int, int] = {}

    def pre(mod: nn.Module, args: Any) -> None:
        start[id(mod)] = counter.get_total_flops()

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        delta = counter.get_total_flops() - start.pop(id(mod))
        mps = owners[id(mod)]
        for mp in mps:
            mask = mp.mask
            dens = float(mask.sum()) / mask.numel() if mask.numel() else 1.0
            share = delta // len(mps)
            acc = per.setdefault(mp.key, [0, 0])
            acc[0] += share
            acc[1] += round(share * dens)

    mods = {id(m): m for m in model.modules()}
    for mid in owners:
        handles.append(mods[mid].register_forward_pre_hook(pre))
        handles.append(mods[mid].register_forward_hook(post))
    was_training = model.training
    was_fastpath = torch.backends.mha.get_fastpath_enabled()
    # Under no_grad an eval-mode nn.TransformerEncoderLayer / nn.MultiheadAttention runs one fused native kernel
    # that FlopCounterMode cannot see (its FLOPs would count as zero); the unfused path computes the same result.
    torch.backends.mha.set_fastpath_enabled(False)
    _set_training(model, False)
    try:
        with torch.no_grad(), counter:
            if isinstance(example, dict):
                model(**example)
            elif isinstance(example, (tuple, list)):
                model(*example)
            else:
                model(example)
    finally:
        torch.backends.mha.set_fastpath_enabled(was_fastpath)
        for h in handles:
            h.remove()
        _set_training(model, was_training)
    dense = counter.get_total_flops()
    saved = sum(d - e for d, e in per.values())
    return dense, dense - saved, {k: (v[0], v[1]) for k, v in per.items()}


def _set_training(model: nn.Module, mode: bool) -> None:
    with contextlib.suppress(NotImplementedError):  # modules unlifted from torch.export have no train/eval switch
        model.train(mode)


def sparsity_report(model: nn.Module, example: Any = None) -> SparsityReport:
    """Per-layer and global statistics of ``model`` (masked or already finalized)."""
    rep = SparsityReport()
    masks = M.masks_of(model)
    flops: dict[str, tuple[int, int]] = {}
    if example is not None:
        rep.dense_flops, rep.effective_flops, flops = count_flops(model, example)
    mask_ids = {id(m) for m in masks.values()}
    seen: set[int] = set()
    for fqn, module in model.named_modules():
        for name, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if id(p) in seen or id(p) in mask_ids:
                continue
            seen.add(id(p))
            is_param = isinstance(p, nn.Parameter)
            rep.dense_bytes += p.numel() * p.element_size()
            key = f"{fqn}.{name}" if fqn else name
            owner_key = _owner_key(key)
            mask = masks.get(owner_key)
            if mask is not None:
                nnz = int(mask.sum())
                rep.compressed_bytes += nnz * p.element_size() + math.ceil(p.numel() / 8)
                rep.masked_params += p.numel()
                rep.masked_nonzero += nnz
            else:
                rep.compressed_bytes += p.numel() * p.element_size()
                nnz = int(torch.count_nonzero(p)) if is_param else p.numel()
            if not is_param:
                continue
            rep.total_params += p.numel()
            rep.total_nonzero += nnz
            if p.dim() > 1:
                d, e = flops.get(owner_key, (0, 0))
                rep.layers.append(LayerStat(owner_key, tuple(p.shape), p.numel(), nnz, d, e))
    return rep


def _owner_key(key: str) -> str:
    """Map ``a.parametrizations.weight.original`` back to ``a.weight``."""
    if ".parametrizations." in f".{key}" and key.endswith(".original"):
        head, _, tail = f".{key}".rpartition(".parametrizations.")
        return f"{head[1:]}.{tail.split('.')[0]}".lstrip(".")
    return key
