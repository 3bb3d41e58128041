"""Structured removal (physical slimming), a separate phase after masking (STYLE.md P10).

``graph.build_groups`` finds coupled channel groups with torch.fx; ``from_masks.plan_from_masks`` turns
``Channel(0)`` masks into a :class:`~prunekit.structure.plan.PrunePlan`; ``plan.apply_plan_`` is the only mutation
and goes through the stateless per-type handlers of ``handlers.HANDLERS``. ``folding.fold_removed_`` moves the
constant outputs of removed units into their consumers (values only) so slimming stays exact;
``dead_units.dead_unit_plan`` finds units left without inputs or outputs by element masks; ``depth`` scores and
removes whole blocks (ShortGPT block influence). ``attention.split_attention_`` replaces ``nn.MultiheadAttention``
by ``SplitMultiheadAttention`` (separate q/k/v/out projections, same outputs) so that its heads can be removed.
"""

from prunekit.structure.attention import SplitMultiheadAttention as SplitMultiheadAttention
from prunekit.structure.attention import split_attention_ as split_attention_
from prunekit.structure.dead_units import DeadUnitReport as DeadUnitReport
from prunekit.structure.dead_units import dead_unit_plan as dead_unit_plan
from prunekit.structure.depth import block_candidates as block_candidates
from prunekit.structure.depth import block_influence as block_influence
from prunekit.structure.depth import depth_plan as depth_plan
from prunekit.structure.depth import lowest_influence as lowest_influence
from prunekit.structure.folding import FoldReport as FoldReport
from prunekit.structure.folding import fold_removed_ as fold_removed_
from prunekit.structure.from_masks import plan_from_masks as plan_from_masks
from prunekit.structure.graph import Group as Group
from prunekit.structure.graph import Member as Member
from prunekit.structure.graph import build_groups as build_groups
from prunekit.structure.handlers import HANDLERS as HANDLERS
from prunekit.structure.handlers import AbstractHandler as AbstractHandler
from prunekit.structure.handlers import StructureError as StructureError
from prunekit.structure.handlers import handler_for as handler_for
from prunekit.structure.handlers import sync_attention_attributes_ as sync_attention_attributes_
from prunekit.structure.importance import StructuredConfig as StructuredConfig
from prunekit.structure.importance import TargetSearch as TargetSearch
from prunekit.structure.importance import plan_for_target as plan_for_target
from prunekit.structure.importance import structured_plan as structured_plan
from prunekit.structure.persist import compose_plans as compose_plans
from prunekit.structure.persist import load_slim as load_slim
from prunekit.structure.persist import save_slim as save_slim
from prunekit.structure.plan import DepthEntry as DepthEntry
from prunekit.structure.plan import PlanEntry as PlanEntry
from prunekit.structure.plan import PlanError as PlanError
from prunekit.structure.plan import PrunePlan as PrunePlan
from prunekit.structure.plan import apply_plan_ as apply_plan_
from prunekit.structure.skip import SkipBlock as SkipBlock
from prunekit.structure.target import ShrinkTarget as ShrinkTarget
