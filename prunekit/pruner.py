"""The Pruner: composes a scorer, an allocator, a pattern and a schedule, and owns nothing else.

Masks live on the modules (:mod:`prunekit.masks`); the Pruner only decides them. Typical training loop::

    pruner = Pruner(recipe).attach(model, optimizer)
    for batch in data:
        loss(model, batch).backward(); optimizer.step(); optimizer.zero_grad()
        pruner.step()          # recomputes masks at the schedule's update steps
    pruner.finalize()          # bake masks into plain weights
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from prunekit import masks as M
from prunekit.allocation import AllocationItem
from prunekit.errors import ConfigError, MaskError
from prunekit.patterns import Unstructured
from prunekit.recipe import PruneRecipe, recipe_to_dict
from prunekit.scoring.base import ScoreContext, Target
from prunekit.select import LazyScores, ScoreFn

log = logging.getLogger(__name__)


def select_targets(model: nn.Module, recipe: PruneRecipe) -> list[Target]:
    """Targets in module registration order, after type/glob filtering and first/last exclusion.

    A tensor shared by several modules (tied embedding and output head) is one target: the first module that
    owns it. Pruning it prunes every use, since it is one tensor.
    """
    spec = recipe.targets
    found: list[Target] = []
    seen: set[int] = set()
    for fqn, m in model.named_modules():
        if spec.matches(fqn, M.module_type_name(m)) and isinstance(getattr(m, spec.param, None), Tensor):
            t = Target(fqn, spec.param, m)
            if id(t.weight) not in seen:
                seen.add(id(t.weight))
                found.append(t)
    if spec.skip_first and found:
        found = found[1:]
    if spec.skip_last and found:
        found = found[:-1]
    return found


class Pruner:
    """Decides masks for the recipe's targets at the schedule's update steps; see the module docstring."""

    def __init__(self, recipe: PruneRecipe | None = None, **fields: Any) -> None:
        self.recipe = recipe if recipe is not None else PruneRecipe(**fields)
        self.step_count = 0
        self.model: nn.Module | None = None
        self.targets: list[Target] = []

    # -- lifecycle ---------------------------------------------------------------------------------------
    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Pruner:
        """Select targets and give each a mask (all kept), or adopt masks already there (e.g. after loading)."""
        r = self.recipe
        targets = select_targets(model, r)
        if not targets:
            raise ConfigError("targets", r.targets.types, "no module of these types matched; check targets.types/include")
        for t in targets:
            r.pattern.validate(t.weight.shape, t.key)
            if M.has_mask(t.module, t.name):
                if M.mask_mode(t.module, t.name) != r.mode:
                    raise MaskError(f"{t.key} already has a {M.mask_mode(t.module, t.name)} mask; recipe asks for {r.mode}")
            else:
                M.attach_mask_(t.module, t.name, mode=r.mode)
        self.model, self.targets = model, targets
        if optimizer is not None:
            M.bind_optimizer_(model, optimizer)
        return self

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise MaskError("Pruner is not attached to a model; call pruner.attach(model) first")
        return self.model

    def step(self, ctx: ScoreContext | None = None) -> bool:
        """Advance one training step; recompute masks if the schedule says so. Returns whether masks changed."""
        s = self.step_count
        updated = False
        if self.recipe.schedule.is_update_step(s):
            self.update_masks(self.recipe.schedule.sparsity_at(s, self.recipe.target), ctx)
            updated = True
        self.step_count += 1
        return updated

    def update_masks(self, sparsity: float, ctx: ScoreContext | None = None) -> dict[str, float]:
        """Score, allocate and select now, at ``sparsity``; returns each target's unit sparsity."""
        model = self._require_model()
        r = self.recipe
        if ctx is None:
            ctx = ScoreContext(model, step=self.step_count)
        r.scorer.check_context(ctx)
        r.update.check_context(ctx)
        stats = r.scorer.collect(ctx, self.targets)
        ustats = r.update.collect(ctx, self.targets)
        target = r.target

        def element_scores(t: Target) -> Tensor:
            s = r.scorer.score(t, stats, ctx).float()
            if r.nested:
                s = torch.where(M.get_mask(t.module, t.name), s, torch.full_like(s, float("-inf")))
            return s

        stream = r.scorer.weight_fn() if isinstance(r.pattern, Unstructured) else None

        def unit_scores(t: Target) -> ScoreFn:
            if stream is not None:  # element-wise criterion: allocation streams it without a full score tensor
                keep = M.get_mask(t.module, t.name) if r.nested else None
                return lambda: LazyScores(t.weight.detach(), stream, keep)
            return lambda: r.pattern.unit_scores(element_scores(t))

        items = []
        for t in self.targets:
            o = r.override_for(t.fqn, t.key)
            fixed = None if o is None else (o * sparsity / target if target > 0 else 0.0)
            shape = t.weight.shape
            items.append(AllocationItem(t.key, shape, r.pattern.num_units(shape), unit_scores(t), fixed))
        alloc = r.allocator.allocate(items, sparsity) if r.pattern.allocatable else {it.key: sparsity for it in items}
        with torch.no_grad():
            for t in self.targets:
                keep = r.pattern.select(element_scores(t), alloc[t.key])
                r.update.update_(t, keep, ustats)
                M.update_mask_(t.module, t.name, keep)
        for opt in M.bound_optimizers(model):
            M.clear_optimizer_state_(opt, model)
        log.debug("masks updated at step %d to sparsity %.4f", self.step_count, sparsity)
        return alloc

    def prune_(self, ctx: ScoreContext | None = None) -> dict[str, float]:
        """One-shot: prune to the recipe's target now, whatever the schedule."""
        return self.update_masks(self.recipe.target, ctx)

    def finalize(self) -> nn.Module:
        """Bake masks into plain weights; the model becomes an ordinary ``nn.Module``."""
        model = self._require_model()
        M.finalize_(model)
        return model

    # -- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (masks themselves are in the model's state_dict)."""
        return {"step": self.step_count, "recipe": recipe_to_dict(self.recipe)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])

    def sparsity(self) -> float:
        """Fraction of target elements currently pruned."""
        total = sum(t.weight.numel() for t in self.targets)
        pruned = sum(int((~M.get_mask(t.module, t.name)).sum()) for t in self.targets)
        return pruned / total if total else 0.0
