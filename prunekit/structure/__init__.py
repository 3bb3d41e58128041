"""Structured removal (physical slimming), a separate phase after masking (STYLE.md P10).

``graph.build_groups`` finds coupled channel groups with torch.fx; ``from_masks.plan_from_masks`` turns
``Channel(0)`` masks into a :class:`~prunekit.structure.plan.PrunePlan`; ``plan.apply_plan_`` is the only mutation
and goes through the stateless per-type handlers of ``handlers.HANDLERS``.
"""

from prunekit.structure.from_masks import plan_from_masks as plan_from_masks
from prunekit.structure.graph import Group as Group
from prunekit.structure.graph import Member as Member
from prunekit.structure.graph import build_groups as build_groups
from prunekit.structure.handlers import HANDLERS as HANDLERS
from prunekit.structure.handlers import AbstractHandler as AbstractHandler
from prunekit.structure.handlers import StructureError as StructureError
from prunekit.structure.handlers import handler_for as handler_for
from prunekit.structure.plan import PlanEntry as PlanEntry
from prunekit.structure.plan import PlanError as PlanError
from prunekit.structure.plan import PrunePlan as PrunePlan
from prunekit.structure.plan import apply_plan_ as apply_plan_
