"""prunekit: pruning and sparsification for PyTorch.

The public surface is listed here explicitly; everything else is internal.
"""

__version__ = "0.1.0"

from prunekit.allocation import ALLOCATORS as ALLOCATORS
from prunekit.allocation import ER as ER
from prunekit.allocation import ERK as ERK
from prunekit.allocation import LAMP as LAMP
from prunekit.allocation import AbstractAllocator as AbstractAllocator
from prunekit.allocation import Global as Global
from prunekit.allocation import Uniform as Uniform
from prunekit.checkpoint import load_checkpoint as load_checkpoint
from prunekit.checkpoint import save_checkpoint as save_checkpoint
from prunekit.data import DATASETS as DATASETS
from prunekit.data import DataError as DataError
from prunekit.data import batches as batches
from prunekit.data import load_dataset as load_dataset
from prunekit.errors import CheckpointError as CheckpointError
from prunekit.errors import ConfigError as ConfigError
from prunekit.errors import MaskError as MaskError
from prunekit.errors import ModelLoadError as ModelLoadError
from prunekit.errors import PrunekitError as PrunekitError
from prunekit.masks import apply_masks_ as apply_masks_
from prunekit.masks import attach_mask_ as attach_mask_
from prunekit.masks import bind_optimizer_ as bind_optimizer_
from prunekit.masks import finalize_ as finalize_
from prunekit.masks import from_torch_prune_ as from_torch_prune_
from prunekit.masks import get_mask as get_mask
from prunekit.masks import masks_of as masks_of
from prunekit.masks import to_torch_prune_ as to_torch_prune_
from prunekit.models import MODELS as MODELS
from prunekit.patterns import NM as NM
from prunekit.patterns import PATTERNS as PATTERNS
from prunekit.patterns import AbstractPattern as AbstractPattern
from prunekit.patterns import Block as Block
from prunekit.patterns import Channel as Channel
from prunekit.patterns import Unstructured as Unstructured
from prunekit.patterns import parse_pattern as parse_pattern
from prunekit.pruner import Pruner as Pruner
from prunekit.recipe import PruneRecipe as PruneRecipe
from prunekit.recipe import Targets as Targets
from prunekit.recipe import dump_recipe as dump_recipe
from prunekit.recipe import load_recipe as load_recipe
from prunekit.recipe import recipe_from_dict as recipe_from_dict
from prunekit.report import sparsity_report as sparsity_report
from prunekit.schedules import SCHEDULES as SCHEDULES
from prunekit.schedules import AbstractSchedule as AbstractSchedule
from prunekit.schedules import Constant as Constant
from prunekit.schedules import Iterative as Iterative
from prunekit.schedules import OneShot as OneShot
from prunekit.schedules import Polynomial as Polynomial
from prunekit.scoring import SCORERS as SCORERS
from prunekit.scoring import AbstractScorer as AbstractScorer
from prunekit.scoring import Magnitude as Magnitude
from prunekit.scoring import RandomScore as RandomScore
from prunekit.scoring import ScoreContext as ScoreContext
from prunekit.scoring import Target as Target
from prunekit.train import TrainConfig as TrainConfig
from prunekit.train import Trainer as Trainer
from prunekit.train import TrainResult as TrainResult
from prunekit.train import train as train
