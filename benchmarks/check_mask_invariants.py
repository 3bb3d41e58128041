"""Correctness check for mask enforcement (run after touching prunekit/masks.py); exits non-zero on any violation.

For LeNet-300-100 and the small conv net, with SGD-momentum (plain, and Nesterov + weight decay), Adam and AdamW,
100 training steps each with masks re-computed twice (50 % at step 0, 90 % at step 50), it checks that

* in-place mode: every pruned weight is exactly 0 after every optimizer step, and every pruned gradient entry is 0
  when the optimizer sees it (checked in an optimizer step pre-hook);
* reparam mode: the effective weight is exactly 0 at pruned entries after every step;
* the mask stays a bool buffer named ``<param>_mask`` (in place) in ``state_dict``, and ``load_state_dict`` of a dense
  state re-zeroes pruned weights.

    python benchmarks/check_mask_invariants.py
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from prunekit import Pruner, PruneRecipe
from prunekit import masks as M

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
}


def run(model_name: str, opt_name: str, mode: str, steps: int = 100) -> list[str]:
    torch.manual_seed(0)
    model = C.MODELS[model_name]()
    opt = OPTIMIZERS[opt_name](model.parameters())
    pruner = Pruner(PruneRecipe(sparsity=0.9, mode=mode)).attach(model, opt)  # type: ignore[arg-type]
    errors: list[str] = []
    where = f"{model_name}/{opt_name}/{mode}"

    def check_grads(o: Any, args: Any, kwargs: Any) -> None:
        for mp in M.masked_params(model):
            g = mp.param.grad
            if mode == "inplace" and g is not None and bool((g[~mp.mask] != 0).any()):
                errors.append(f"{where}: non-zero gradient at pruned entries of {mp.key} seen by the optimizer")

    opt.register_step_pre_hook(check_grads)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        if step in (0, 50):
            pruner.update_masks(0.5 if step == 0 else 0.9)
        x = torch.randn(32, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (32,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        for mp in M.masked_params(model):
            w = getattr(mp.module, mp.name).detach()
            if not bool((w[~mp.mask] == 0).all()):
                errors.append(f"{where}: step {step}: pruned entries of {mp.key} became non-zero")
        if errors:
            return errors
    if abs(pruner.sparsity() - 0.9) > 0.01:
        errors.append(f"{where}: sparsity {pruner.sparsity():.3f} != 0.9")
    if mode == "inplace":
        sd = model.state_dict()
        for mp in M.masked_params(model):
            key = f"{mp.fqn}.{mp.name}_mask" if mp.fqn else f"{mp.name}_mask"
            if key not in sd or sd[key].dtype != torch.bool or mp.module._buffers.get(f"{mp.name}_mask") is None:
                errors.append(f"{where}: {key} is not a bool buffer in state_dict")
        dense = {k: (torch.randn_like(v) if not k.endswith("_mask") else v) for k, v in sd.items()}
        model.load_state_dict(dense)
        for mp in M.masked_params(model):
            if not bool((mp.param[~mp.mask] == 0).all()):
                errors.append(f"{where}: load_state_dict of dense weights left pruned entries non-zero")
    return errors


def self_test() -> None:
    """The checks must be able to fail: disable enforcement pieces and expect the matching violation."""
    saved = M._grad_hook, M.apply_masks_
    try:
        M._grad_hook = lambda module_ref, name: lambda p: None  # type: ignore[assignment]
        errs = run("lenet-300-100", "sgd-momentum", "inplace", steps=5)
        assert any("gradient" in e for e in errs), f"gradient check did not fire: {errs}"
        M.apply_masks_ = lambda model: None  # type: ignore[assignment]
        errs = run("lenet-300-100", "sgd-momentum", "inplace", steps=5)
        assert any("became non-zero" in e for e in errs), f"weight check did not fire: {errs}"
    finally:
        M._grad_hook, M.apply_masks_ = saved
    print("self-test ok: both checks fire when enforcement is disabled")


def main() -> None:
    self_test()
    failures: list[str] = []
    n = 0
    for model_name in C.MODELS:
        for opt_name in OPTIMIZERS:
            for mode in ("inplace", "reparam"):
                errs = run(model_name, opt_name, mode)
                n += 1
                status = "ok" if not errs else "FAIL"
                print(f"{status:4s} {model_name:14s} {opt_name:16s} {mode}")
                failures += errs
    for f in failures[:20]:
        print("  " + f)
    print(f"{n - len({f.split(':')[0] for f in failures})}/{n} configurations passed (100 steps each)")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
