"""Importance scorers: what to prune. Each returns scores shaped like its target tensor (higher = keep)."""

from prunekit.scoring.activation import ActivationEntropy, ActivationMean, ActivationVariance, APoZ, NearZero
from prunekit.scoring.base import SCORERS, AbstractScorer, ScoreContext, Target
from prunekit.scoring.hessian import OBD, OBS
from prunekit.scoring.lda import LDA
from prunekit.scoring.magnitude import Magnitude
from prunekit.scoring.norms import FPGM, UnitNorm
from prunekit.scoring.obs import ObsResult, obs_prune, obs_prune_layer_, obs_saliency, reconstruction_hessian
from prunekit.scoring.random import RandomScore
from prunekit.scoring.redundancy import ActivationCorrelation, Fold, WeightCosine, affine_fit, apply_folds_, fold_unit_
from prunekit.scoring.taylor import Taylor, TaylorActivation

__all__ = [
    "FPGM",
    "LDA",
    "OBD",
    "OBS",
    "SCORERS",
    "APoZ",
    "AbstractScorer",
    "ActivationCorrelation",
    "ActivationEntropy",
    "ActivationMean",
    "ActivationVariance",
    "Fold",
    "Magnitude",
    "NearZero",
    "ObsResult",
    "RandomScore",
    "ScoreContext",
    "Target",
    "Taylor",
    "TaylorActivation",
    "UnitNorm",
    "WeightCosine",
    "affine_fit",
    "apply_folds_",
    "fold_unit_",
    "obs_prune",
    "obs_prune_layer_",
    "obs_saliency",
    "reconstruction_hessian",
]
