"""Group importance and allocation: which units of every coupled group are removed.

A :class:`~prunekit.structure.graph.Group` has ``size`` units shared by its members (producers' output units,
followers' channels, consumers' input units). Its units are scored from **any** registered element-wise scorer:

1. Element scores ``s_e`` of every scored member's weight (``scorer.collect`` + ``scorer.score``; data-driven
   criteria run the :class:`~prunekit.scoring.base.ScoreContext`'s calibration data once for all members).
2. Member unit score: the sum over the unit's slice of the member's axis,
   ``u_m(c) = sum_{j < block} sum_{e in slice(offset + c*block + j)} s_e`` (producers and followers: the output
   slice, e.g. filter ``c``; consumers: the input slice, e.g. column ``c`` of the next Linear, or the ``block``
   columns a flattened channel feeds). With ``magnitude`` (p=1) that is the unit's L1 norm; unit-level
   criteria (``unit_norm``, ``fpgm``, activation statistics) give their unit score back exactly.
3. Per-member normalisation ``n_m``: ``none``: ``u``; ``mean``: ``u / mean|u|``; ``max``: ``u / max|u|``;
   ``l2``: ``u / ||u||_2`` (a member whose denominator is 0 is left as is).
4. Group score ``G(c) = R_m n_m(u_m)(c)`` with ``R`` = ``sum``, ``mean`` or ``max`` over members. A member whose
   unit scores are all equal carries no ranking information (an output-unit criterion such as APoZ, spread over a
   consumer's rows, is constant across its input units) and is left out of ``R`` when another member is not.
   ``param`` followers (a layer scale, a class token, position embeddings: tensors sliced with the group, not
   modules) are never scored, whatever ``roles`` says: scorers rate module weights (activation criteria hook
   modules), so a group is ranked by its modules.
5. ``param`` producers and consumers (a tensor used as the weight of a functional linear map, e.g. the fused
   expert weights of a mixture-of-experts layer, Mixtral of Experts, Jiang et al. 2024:
   ``y = sum_{i in top-k(x)} G(x)_i * SwiGLU_i(x)``, ``SwiGLU_i(x) = W2_i (silu(W1_i x) * W3_i x)``, stored as
   ``gate_up_proj[i] = [W1_i; W3_i]`` (E, 2I, H) and ``down_proj[i] = W2_i`` (E, H, I)) are scored, when their
   role is in ``roles``, by a magnitude criterion whatever the scorer: the L2 norm of the unit's slice across all
   other dims, ``u_m(c) = sqrt(sum_{j < block} sum_{i != dim} T[..., offset + c*block + j, ...]^2)`` (the
   ``dim`` of the unit; for the intermediate unit ``c`` of the experts, the gate row, the up row and the
   ``down_proj`` column of *every* expert: the tensor is fused, so a unit goes from all experts at once, the
   usual constraint of fused MoE layouts). The scorer cannot rate them: it scores module weights, and activation
   criteria hook modules, which do not see one expert's rows. In a group that also has module members (the
   residual stream through the experts) those L2 scores are combined with the scorer's, so use a normalisation
   other than ``none`` there.

Allocation decides how many units each group loses; the lowest-scoring ones go (ties: lower index first):

* ``uniform``: every group loses ``round(ratio * size)`` units;
* ``global``: one threshold over the (normalised) group scores of all groups removes ``round(ratio * total
  units)``, with ``max_fraction`` capping the fraction any one group loses.

Constraints, honoured by both: the kept count is a multiple of ``round_to`` (the least common multiple of the
config's and the group's ``round_to``, e.g. an attention head size) unless the group is left whole, so kept counts
are rounded *up* (never more removal than asked); at least one multiple always stays (never every unit); through a
``GroupNorm`` only whole normalisation groups go. The result, ``kept`` per group index, feeds
:func:`~prunekit.structure.from_masks.plan_for_groups`; :func:`structured_plan` does all of it.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from prunekit.config import build_component, from_dict, to_dict
from prunekit.errors import ConfigError
from prunekit.masks import module_type_name
from prunekit.recipe import DEFAULT_TYPES
from prunekit.registry import Registry
from prunekit.scoring.base import SCORERS, AbstractScorer, ScoreContext, Target
from prunekit.scoring.magnitude import Magnitude
from prunekit.structure.attention import attention_split
from prunekit.structure.compare import count_macs, count_params
from prunekit.structure.from_masks import plan_for_groups, with_temporary_splits
from prunekit.structure.graph import Group, Member, ModuleRole, build_groups
from prunekit.structure.handlers import handler_for, model_tensor
from prunekit.structure.plan import PrunePlan, apply_plan_
from prunekit.structure.target import TARGET_HELP, Metric, ShrinkTarget, parse_target, solve_increasing

log = logging.getLogger(__name__)

Reduction = Literal["sum", "mean", "max"]
Normalization = Literal["none", "mean", "max", "l2"]
REDUCTIONS: tuple[Reduction, ...] = ("sum", "mean", "max")
NORMALIZATIONS: tuple[Normalization, ...] = ("none", "mean", "max", "l2")
# roles of modules and of "param" members (Member.part); param followers are sliced, never scored
ROLES: tuple[ModuleRole, ...] = ("producer", "follower", "consumer")
CONFIG_VERSION = 1


def _help(text: str) -> dict[str, str]:
    return {"help": text}


# -- allocation ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Steps:
    """The removals a group allows, cheapest first: after step ``j``, ``removed[j]`` of its ``size`` units are gone.

    ``score[j]`` is the highest group score among the units removed by step ``j`` (non-decreasing in ``j``).
    Steps are cumulative: step ``j`` includes steps ``0..j-1``. ``removed`` grows by the rounding multiple.
    """

    size: int
    removed: tuple[int, ...]
    score: tuple[float, ...]


GROUP_ALLOCATORS: Registry[type[AbstractGroupAllocator]] = Registry("group allocator")


class AbstractGroupAllocator(ABC):
    """Interface: ``allocate(steps, ratio) -> steps taken per group`` (0 = the group stays whole).

    Kept separate from :mod:`prunekit.allocation`, whose allocators return a sparsity per tensor and know nothing
    of kept-count multiples; here a group can only lose what its :class:`Steps` allow.
    """

    registry_name: ClassVar[str] = ""

    @abstractmethod
    def allocate(self, steps: Sequence[Steps], ratio: float) -> list[int]:
        """Number of steps taken in each group for a removal ``ratio`` in [0, 1)."""


def _taken_within(s: Steps, budget: int) -> int:
    """Steps of ``s`` whose cumulative removal stays within ``budget`` units."""
    return sum(1 for r in s.removed if r <= budget)


@GROUP_ALLOCATORS.register("uniform")
@dataclass(frozen=True)
class UniformGroups(AbstractGroupAllocator):
    """Every group loses ``round(ratio * size)`` units (fewer when rounding or the last multiple forbids it)."""

    def allocate(self, steps: Sequence[Steps], ratio: float) -> list[int]:
        return [_taken_within(s, round(ratio * s.size)) for s in steps]


@GROUP_ALLOCATORS.register("global")
@dataclass(frozen=True)
class GlobalGroups(AbstractGroupAllocator):
    """One threshold over all groups' scores: the globally lowest units go, ``round(ratio * total units)`` of them.

    Steps are taken in ascending order of ``Steps.score`` (ties: group index, then step); a step that would
    overshoot the total, or push its group past ``max_fraction`` of its units, is refused and closes that group.
    Without rounding every step is one unit, so the count is exact unless caps bind.
    """

    max_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.max_fraction is not None and not (
            isinstance(self.max_fraction, (int, float)) and 0.0 <= self.max_fraction <= 1.0
        ):
            raise ConfigError("allocator.max_fraction", self.max_fraction, "must be in [0, 1] (or null: no cap)")

    def allocate(self, steps: Sequence[Steps], ratio: float) -> list[int]:
        budget = round(ratio * sum(s.size for s in steps))
        caps = [
            len(s.removed) if self.max_fraction is None else _taken_within(s, math.floor(self.max_fraction * s.size))
            for s in steps
        ]
        order = sorted((sc, g, j) for g, s in enumerate(steps) for j, sc in enumerate(s.score[: caps[g]]))
        taken = [0] * len(steps)
        closed: set[int] = set()
        removed = 0
        for _, g, j in order:
            if removed == budget:
                break
            if g in closed or j != taken[g]:
                continue
            delta = steps[g].removed[j] - (steps[g].removed[j - 1] if j else 0)
            if removed + delta > budget:
                closed.add(g)
                continue
            taken[g] += 1
            removed += delta
        return taken


# -- configuration -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StructuredConfig:
    """How units are scored, which groups are eligible, and how many units go (``prunekit shrink`` recipe).

    Groups are selected by their producers: a group is eligible when it is prunable, *every* producer's type
    matches ``types`` (so a transformer's residual stream, produced by an ``Embedding`` too, stays unless
    ``Embedding`` is listed), *some* producer's fqn matches ``include`` (when given), and *no* producer matches
    ``exclude``. ``Conv1D`` is Hugging Face's linear layer of GPT-2 (``torch.nn.Conv1d`` is ``Conv1d``).
    A parameter that produces a group's units (the rows of a fused expert weight, ``param_role="producer"``) is a
    producer too: its type is the class name of the module that owns it (``MixtralExperts`` for
    ``model.layers.0.mlp.experts.gate_up_proj``, not in the default ``types``: list it to prune the experts'
    intermediate units) and its fqn is the tensor's path.
    """

    ratio: float = field(
        default=0.5, metadata=_help("fraction of units removed, in [0, 1) (per group or overall; searched when target is set)")
    )
    scorer: AbstractScorer = field(default_factory=Magnitude, metadata=_help("element criterion (prunekit list scorers)"))
    reduction: Reduction = field(default="mean", metadata=_help("combine members' unit scores: sum, mean or max"))
    normalize: Normalization = field(default="mean", metadata=_help("per-member normalisation: none, mean, max or l2"))
    roles: tuple[ModuleRole, ...] = field(
        default=("producer", "consumer"), metadata=_help("member roles that are scored: producer, follower, consumer")
    )
    allocator: AbstractGroupAllocator = field(
        default_factory=UniformGroups, metadata=_help("uniform, or global with a per-group cap {name: global, max_fraction: 0.8}")
    )
    round_to: int = field(default=1, metadata=_help("kept units per group are a multiple of this (e.g. 8)"))
    types: tuple[str, ...] = field(
        default=(*DEFAULT_TYPES, "Conv1D"), metadata=_help("module class names (globs) every producer of a group must match")
    )
    include: tuple[str, ...] = field(default=(), metadata=_help("fqn globs: groups with a matching producer (empty: all)"))
    exclude: tuple[str, ...] = field(default=(), metadata=_help("producer fqn globs whose units are never removed"))
    target: ShrinkTarget | None = field(
        default=None, metadata=_help("a cost reduction instead of a ratio (the ratio is searched): macs=2x or params=1.5x")
    )
    version: int = field(default=CONFIG_VERSION, metadata=_help("config format version"))

    def __post_init__(self) -> None:
        if self.target is not None and not isinstance(self.target, ShrinkTarget):
            object.__setattr__(self, "target", parse_target(self.target))
        if self.version != CONFIG_VERSION:
            raise ConfigError("version", self.version, f"this prunekit reads structured config version {CONFIG_VERSION}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 <= self.ratio < 1.0:
            raise ConfigError("ratio", self.ratio, "must be in [0, 1)")
        if self.reduction not in REDUCTIONS:
            raise ConfigError("reduction", self.reduction, f"allowed: {', '.join(REDUCTIONS)}")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError("normalize", self.normalize, f"allowed: {', '.join(NORMALIZATIONS)}")
        if not self.roles or any(r not in ROLES for r in self.roles):
            raise ConfigError("roles", self.roles, f"a non-empty list of {', '.join(ROLES)}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError("round_to", self.round_to, "must be a positive integer")
        if not isinstance(self.scorer, AbstractScorer):
            raise ConfigError("scorer", self.scorer, f"a registered scorer: {', '.join(SCORERS.names())}")
        if not isinstance(self.allocator, AbstractGroupAllocator):
            raise ConfigError("allocator", self.allocator, f"a group allocator: {', '.join(GROUP_ALLOCATORS.names())}")

    def selects(self, model_modules: Mapping[str, nn.Module], group: Group) -> bool:
        """Whether ``group`` is eligible (see the class docstring)."""
        if not group.prunable:
            return False
        prods = group.producers + group.param_producers
        if any(fnmatch.fnmatchcase(p.fqn, g) for p in prods for g in self.exclude):
            return False
        if not all(any(fnmatch.fnmatchcase(_producer_type(model_modules, p), t) for t in self.types) for p in prods):
            return False
        return not self.include or any(fnmatch.fnmatchcase(p.fqn, g) for p in prods for g in self.include)


def _producer_type(model_modules: Mapping[str, nn.Module], p: Member) -> str:
    """A producer's class name; for a ``param`` producer, the class of the module that owns the tensor."""
    owner = model_modules[p.fqn.rpartition(".")[0] if p.role == "param" else p.fqn]
    return module_type_name(owner)


def config_from_dict(data: Any) -> StructuredConfig:
    """Build and validate a :class:`StructuredConfig` from plain data (parsed YAML/JSON)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("structured config", data, "expected a mapping of fields")
    data = dict(data)
    if "scorer" in data:
        data["scorer"] = build_component(SCORERS, data["scorer"], "scorer")
    if "allocator" in data:
        data["allocator"] = build_component(GROUP_ALLOCATORS, data["allocator"], "allocator")
    if "target" in data:
        data["target"] = parse_target(data["target"])
    return from_dict(StructuredConfig, data)


def config_to_dict(config: StructuredConfig) -> dict[str, Any]:
    """Plain-data form (components carry their registered ``name``); :func:`config_from_dict` reads it back."""
    out: dict[str, Any] = to_dict(config)
    out["target"] = None if config.target is None else str(config.target)
    return out


# -- scoring -------------------------------------------------------------------------------------------------------


def _weight(module: nn.Module) -> Tensor | None:
    w = getattr(module, "weight", None)
    return w if isinstance(w, Tensor) else None


def axis_scores(module: nn.Module, fqn: str, axis: Literal["out", "in"], scores: Tensor) -> Tensor | None:
    """Element scores of ``module.weight`` summed per unit of its ``out`` or ``in`` axis; None if not mappable.

    ``out``: the handler's ``unit_dim`` (dim 0 of a Linear/Conv, dim 1 of an Embedding or a Hugging Face
    ``Conv1D``, the only dim of a norm's weight). ``in``: the other one of the first two dims (dim 1 of a
    Linear/Conv, dim 0 of a ``Conv1D``); a grouped conv's input channel ``i`` is column ``i mod (in/g)`` of the rows
    of group ``i div (in/g)``.
    """
    h = handler_for(module, fqn)
    s = scores.detach().float()
    d = h.unit_dim(module)
    d = 0 if d is None else d
    if axis == "out":
        n = h.num_out(module)
        if s.dim() == 0 or d >= s.dim() or s.shape[d] != n:
            return None
        return s.transpose(0, d).reshape(n, -1).sum(1)
    n = h.num_in(module)
    if s.dim() < 2 or d > 1:
        return None
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        g, rows = int(module.groups), s.shape[0]
        if s.shape[1] * g != n or rows % g:
            return None
        return s.reshape(g, rows // g, s.shape[1], -1).sum((1, 3)).reshape(n)  # (g, in/g) -> (in,)
    d_in = 1 - d
    if s.shape[d_in] != n:
        return None
    return s.transpose(0, d_in).reshape(n, -1).sum(1)


def member_unit_scores(member: Member, size: int, per_axis: Tensor) -> Tensor:
    """``u_m(c) = sum_j per_axis[offset + c*block + j]`` for the group's ``size`` units: shape (size,)."""
    idx = member.offset + torch.arange(size)[:, None] * member.block + torch.arange(member.block)[None, :]  # (size, block)
    if int(idx.max()) >= per_axis.numel():
        raise ConfigError(
            "structure",
            member.fqn,
            f"group of {size} units (block {member.block}, offset {member.offset}) exceeds the {per_axis.numel()} units "
            f"of its {member.axis} axis",
        )
    return per_axis[idx].sum(1)


def normalize_member(u: Tensor, how: Normalization) -> Tensor:
    """Per-member rescaling (see the module docstring); a zero denominator leaves ``u`` unchanged."""
    if how == "none":
        return u
    if how == "mean":
        d = u.abs().mean()
    elif how == "max":
        d = u.abs().max()
    else:
        d = u.norm()
    return u / d if float(d) > 0 else u


def _constant(u: Tensor) -> bool:
    span = float(u.max() - u.min())
    return span <= 1e-6 * max(float(u.abs().max()), 1e-30)


def combine_members(unit_scores: Sequence[Tensor], normalize: Normalization, reduction: Reduction) -> Tensor:
    """``G(c) = R_m n_m(u_m)(c)``; members with all-equal scores are dropped when another member is not."""
    informative = [u for u in unit_scores if not _constant(u)]
    used = informative or list(unit_scores)
    stack = torch.stack([normalize_member(u.double(), normalize) for u in used])  # (members, size)
    if reduction == "sum":
        return stack.sum(0)
    if reduction == "mean":
        return stack.mean(0)
    return stack.max(0).values


def _scored_members(group: Group, config: StructuredConfig, mods: Mapping[str, nn.Module]) -> list[Member]:
    """Module members of the configured roles that have a weight (``param`` members: :func:`_scored_params`)."""
    return [m for m in group.members if m.role != "param" and m.role in config.roles and _weight(mods[m.fqn]) is not None]


def _scored_params(group: Group, config: StructuredConfig) -> list[Member]:
    """``param`` producers and consumers of the configured roles (followers never are: module docstring)."""
    return [m for m in group.weight_params if m.part in config.roles]


def param_unit_scores(tensor: Tensor, member: Member, size: int) -> Tensor:
    """Magnitude score of a ``param`` member's units, shape (size,): the L2 norm of each unit's slice of ``tensor``
    along ``member.dim``, across all other dims, ``u(c) = sqrt(sum_{j < block} sum T[..., offset + c*block + j,
    ...]^2)`` (for a fused expert weight: across every expert)."""
    if member.dim is None:
        raise ConfigError("structure", member.fqn, "a param member without a dim cannot be scored")
    t = tensor.detach().float().cpu()
    per_axis = t.movedim(member.dim, 0).reshape(t.shape[member.dim], -1).pow(2).sum(1)
    return member_unit_scores(member, size, per_axis).sqrt()


def group_scores(
    model: nn.Module, groups: Sequence[Group], config: StructuredConfig, ctx: ScoreContext | None = None
) -> dict[int, Tensor]:
    """Score of every unit of every eligible group: ``{group index: (size,) float64}``.

    Every scored member's weight is one scorer target; data-driven criteria collect their statistics once for all
    of them (``ctx`` must then carry calibration data and, for gradients, a loss). Groups none of whose members
    can be scored (no weight, or an axis the scores do not map to) are left out with a warning.
    """
    mods = dict(model.named_modules())
    chosen = [i for i, g in enumerate(groups) if config.selects(mods, g)]
    members = {i: _scored_members(groups[i], config, mods) for i in chosen}
    params = {i: _scored_params(groups[i], config) for i in chosen}
    fqns = list(dict.fromkeys(m.fqn for ms in members.values() for m in ms))
    axes: dict[tuple[str, str], Tensor | None] = {}
    if fqns:
        targets = [Target(f, "weight", mods[f]) for f in fqns]
        ctx = ctx if ctx is not None else ScoreContext(model)
        scorer = config.scorer
        scorer.check_context(ctx)
        stats = scorer.collect(ctx, targets)
        needed: dict[str, set[Literal["out", "in"]]] = {}
        for ms in members.values():
            for m in ms:
                needed.setdefault(m.fqn, set()).add(m.axis)
        for t in targets:  # one weight's element scores at a time: reduced to its axes at once
            elem = scorer.score(t, stats, ctx).detach().float().cpu()
            for axis in needed[t.fqn]:
                axes[(t.fqn, axis)] = axis_scores(t.module, t.fqn, axis, elem)
    if any(params.values()) and not isinstance(config.scorer, Magnitude):
        log.info("parameters used as weights (fused experts) are scored by the L2 norm of their units' slices")
    out: dict[int, Tensor] = {}
    for i in chosen:
        g = groups[i]
        units = []
        for m in members[i]:
            per_axis = axes[(m.fqn, m.axis)]
            if per_axis is None:
                log.info("group of %s: scores of %s do not map to its %s axis; member not scored", g.label, m.fqn, m.axis)
                continue
            units.append(member_unit_scores(m, g.size, per_axis))
        for m in params[i]:
            found = model_tensor(model, m.fqn)
            if found is None:
                raise ConfigError("structure", m.fqn, "group member is not a parameter or buffer of the model")
            units.append(param_unit_scores(found[2], m, g.size))
        if not units:
            log.warning("group of %s has no scorable member for roles %s; left whole", g.label, config.roles)
            continue
        out[i] = combine_members(units, config.normalize, config.reduction)
    return out


# -- atoms, steps and selection ------------------------------------------------------------------------------------


def _atom_ids(model_modules: Mapping[str, nn.Module], group: Group) -> Tensor | None:
    """Unit -> atom id; an atom is a GroupNorm normalisation group (removed whole). None when no GroupNorm is in the
    group; a (0,)-tensor when the group cannot be cut into whole normalisation groups."""
    ids: Tensor | None = None
    for m in group.members:
        gn = model_modules.get(m.fqn)  # None for a parameter/buffer member
        if not isinstance(gn, nn.GroupNorm):
            continue
        per = int(gn.num_channels) // int(gn.num_groups)
        if m.block != 1 or m.offset % per or group.size % per:
            return torch.zeros(0, dtype=torch.long)
        gid = torch.arange(group.size) // per
        if ids is not None and not torch.equal(ids, gid):
            return torch.zeros(0, dtype=torch.long)
        ids = gid
    return ids


def group_multiple(group: Group, round_to: int) -> int:
    """Kept units must be a multiple of ``lcm(round_to, group.round_to)``."""
    return math.lcm(round_to, int(getattr(group, "round_to", 1) or 1))


def removal_steps(scores: Tensor, multiple: int, atom: int = 1) -> tuple[Steps, Tensor]:
    """The :class:`Steps` of one group and its atom order (ascending score, ties by index).

    ``scores`` has one entry per atom of ``atom`` units; kept atoms must number a multiple of
    ``m = lcm(multiple, atom) / atom`` and at least ``m``. With ``N`` atoms the kept counts are ``q, q - m, ..., m``
    for ``q`` the largest multiple of ``m`` below ``N``; step ``j`` removes the ``N - (q - j*m)`` lowest atoms and
    scores as the highest of them.
    """
    n = scores.numel()
    m = math.lcm(multiple, atom) // atom
    order = torch.sort(scores, stable=True).indices
    ranked = scores[order]
    q = (n - 1) // m * m
    removed, score = [], []
    for kept in range(q, m - 1, -m):
        gone = n - kept
        removed.append(gone * atom)
        score.append(float(ranked[gone - 1]))
    return Steps(n * atom, tuple(removed), tuple(score)), order


@dataclass(frozen=True)
class RankedGroup:
    """A scored group: its index, atom size (units removed together), atom order (lowest score first), steps."""

    index: int
    atom: int
    order: Tensor
    steps: Steps


def rank_groups(
    model: nn.Module, groups: Sequence[Group], config: StructuredConfig, ctx: ScoreContext | None = None
) -> list[RankedGroup]:
    """Score every eligible group once (:func:`group_scores`) and order its units for removal."""
    mods = dict(model.named_modules())
    scores = group_scores(model, groups, config, ctx)
    ranked: list[RankedGroup] = []
    for i, s in scores.items():
        g = groups[i]
        ids = _atom_ids(mods, g)
        if ids is not None and ids.numel() == 0:
            log.warning("group of %s: a GroupNorm would be split; left whole", g.label)
            continue
        atom = 1
        if ids is not None:
            atom = g.size // (int(ids.max()) + 1)
            s = s.reshape(-1, atom).mean(1)  # one score per normalisation group
        steps, order = removal_steps(s, group_multiple(g, config.round_to), atom)
        ranked.append(RankedGroup(i, atom, order, steps))
    return ranked


def kept_for_ratio(
    groups: Sequence[Group], ranked: Sequence[RankedGroup], allocator: AbstractGroupAllocator, ratio: float
) -> dict[int, Tensor]:
    """``{group index: sorted kept unit indices}`` for every group that loses units at ``ratio``."""
    taken = allocator.allocate([r.steps for r in ranked], float(ratio))
    kept: dict[int, Tensor] = {}
    for r, t in zip(ranked, taken, strict=True):
        if t == 0:
            continue
        gone_units = r.steps.removed[t - 1]
        gone_atoms = r.order[: gone_units // r.atom]
        keep = torch.ones(groups[r.index].size, dtype=torch.bool)
        keep[(gone_atoms[:, None] * r.atom + torch.arange(r.atom)[None, :]).flatten()] = False
        kept[r.index] = keep.nonzero().flatten()
        log.debug("group of %s: removing %d of %d units", groups[r.index].label, gone_units, groups[r.index].size)
    return kept


def select_kept(
    model: nn.Module, groups: Sequence[Group], config: StructuredConfig, ctx: ScoreContext | None = None
) -> dict[int, Tensor]:
    """``{group index: sorted kept unit indices}`` for every group that loses units (input of ``plan_for_groups``)."""
    return kept_for_ratio(groups, rank_groups(model, groups, config, ctx), config.allocator, float(config.ratio))


def structured_plan(
    model: nn.Module,
    example_input: Any,
    config: StructuredConfig | None = None,
    ctx: ScoreContext | None = None,
    groups: Sequence[Group] | None = None,
) -> PrunePlan:
    """The plan that removes ``config.ratio`` of the eligible groups' units by group importance (module docstring),
    or, when ``config.target`` is set, the plan :func:`plan_for_target` finds for that cost reduction.

    ``model`` is not changed; apply the plan with :func:`~prunekit.structure.plan.apply_plan_`. ``example_input``:
    what ``build_groups`` traces the model with (a tensor, a tuple, or a dict of keyword inputs for Hugging Face
    models); ``groups`` defaults to ``build_groups(model, example_input)``.

    Attention heads of ``nn.MultiheadAttention`` (``nn.TransformerEncoder``/``TransformerDecoder`` layers): when
    ``groups`` is not given, every such module is replaced by its
    :class:`~prunekit.structure.attention.SplitMultiheadAttention` (separate q/k/v/out projections, same outputs)
    for the analysis, and the original modules are put back before returning (also on error), so the caller's
    model, its ``state_dict`` keys and any optimizer built on its parameters stay valid. ``ctx`` must score
    ``model`` itself (the split modules are inside it while scoring). The plan's ``split`` names the modules whose
    projections it changes (plus any ``SplitMultiheadAttention`` already in the model); ``apply_plan_`` splits them
    first, on ``model`` or on a freshly built original.
    """
    config = config if config is not None else StructuredConfig()
    if config.target is not None:
        return plan_for_target(model, example_input, config, ctx, groups).plan
    with attention_split(model, enabled=groups is None) as split:
        if split:
            log.info("scoring attention heads: %d nn.MultiheadAttention modules split for the analysis", len(split))
        gs = list(groups) if groups is not None else build_groups(model, example_input)
        plan = plan_for_groups(model, gs, select_kept(model, gs, config, ctx))  # its split: attention split before
        return with_temporary_splits(model, plan, split)


@dataclass(frozen=True)
class TargetSearch:
    """What :func:`plan_for_target` found: the plan, its ratio, and the cost reduction it reaches."""

    target: ShrinkTarget
    plan: PrunePlan
    ratio: float
    reduction: float  # dense cost / slim cost of ``plan``
    dense_cost: int
    cost: int
    plans: int  # candidate plans built and measured
    reachable: bool  # some ratio up to MAX_TARGET_RATIO reaches the target (within the tolerance)
    within: bool  # |reduction / target - 1| <= tolerance

    def describe(self) -> str:
        """One line: target, reached reduction, ratio, number of plans."""
        what = "parameters" if self.target.metric == "params" else "MACs"
        return (
            f"target {self.target}: ratio {self.ratio:.4f} gives {self.reduction:.3f}x fewer {what} "
            f"({self.dense_cost:,} -> {self.cost:,}; {self.plans} plans tried)"
        )


MAX_TARGET_RATIO = 0.95  # the largest removal ratio a target search tries


def model_cost(model: nn.Module, example_input: Any, metric: Metric) -> int:
    """Parameters (each shared tensor once) or MACs of one forward pass on ``example_input``."""
    return count_params(model) if metric == "params" else count_macs(model, example_input)


def plan_for_target(
    model: nn.Module,
    example_input: Any,
    config: StructuredConfig,
    ctx: ScoreContext | None = None,
    groups: Sequence[Group] | None = None,
    tolerance: float = 0.01,
    max_plans: int = 16,
    strict: bool = True,
) -> TargetSearch:
    """The removal ratio (uniform: per group; global: overall) whose plan reduces the model's cost by
    ``config.target``, found by :func:`~prunekit.structure.target.solve_increasing` on
    ``g(r) = (dense cost / cost of the slim model at r) / reduction - 1``.

    Units are scored once (:func:`rank_groups`); each candidate ratio re-allocates (:func:`kept_for_ratio`), builds
    its plan and measures a slim copy of the model (the model itself is not changed). Costs are step functions of
    the ratio, so the search stops within ``tolerance`` of the target or after ``max_plans`` plans, returning the
    closest plan seen (ties: the smaller ratio) with a warning when it is not within ``tolerance``. Raises
    :class:`~prunekit.errors.ConfigError` naming ``target`` when even ratio ``MAX_TARGET_RATIO`` falls short (the
    message gives the reduction that ratio reaches; with ``strict=False`` that closest plan is returned with
    ``reachable`` False), or when the target is not set. ``groups``, ``ctx`` and the
    attention split: as :func:`structured_plan`.
    """
    target = config.target
    if target is None:
        raise ConfigError("target", None, f"missing: plan_for_target needs a cost target, {TARGET_HELP}")
    if not 0.0 < tolerance < 1.0:
        raise ConfigError("tolerance", tolerance, "must be in (0, 1)")
    if max_plans < 1:
        raise ConfigError("max_plans", max_plans, "must be a positive integer")
    with attention_split(model, enabled=groups is None) as split:
        gs = list(groups) if groups is not None else build_groups(model, example_input)
        ranked = rank_groups(model, gs, config, ctx)
        dense = model_cost(model, example_input, target.metric)
        built: dict[float, tuple[PrunePlan, int]] = {}

        def g(r: float) -> float:
            plan = plan_for_groups(model, gs, kept_for_ratio(gs, ranked, config.allocator, r))
            cost = model_cost(apply_plan_(copy.deepcopy(model), plan), example_input, target.metric)
            built[r] = (plan, cost)
            return dense / max(cost, 1) / target.reduction - 1.0

        start = min(MAX_TARGET_RATIO, 1.0 - target.reduction**-0.5)  # exact when costs are quadratic in every width
        seen = solve_increasing(g, 0.0, MAX_TARGET_RATIO, 1.0 / target.reduction - 1.0, start, tolerance, max_plans)
        best, v = min(seen, key=lambda p: (abs(p[1]), p[0]))
        top = max(p[1] for p in seen)
        if strict and top < -tolerance and max(p[0] for p in seen) >= MAX_TARGET_RATIO:
            reached = (top + 1.0) * target.reduction
            raise ConfigError(
                "target", str(target),
                f"unreachable: removing {MAX_TARGET_RATIO:.0%} of the eligible units gives {reached:.3g}x; ask for less "
                "or make more groups eligible (--types, --include, --exclude)",
            )  # fmt: skip
        plan, cost = built[best]
        result = TargetSearch(
            target, with_temporary_splits(model, plan, split), best, (v + 1.0) * target.reduction, dense, cost,
            len(seen), top >= -tolerance, abs(v) <= tolerance,
        )  # fmt: skip
    if not result.within:
        log.warning("%s; the closest plan the search found (costs change in steps)", result.describe())
    else:
        log.info("%s", result.describe())
    return result
