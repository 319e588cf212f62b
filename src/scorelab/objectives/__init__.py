"""Training objectives: denoising, implicit and sliced score matching, DDPM's L_simple, and the hybrid objective
with its variational bound (``scorelab.objectives.vlb``)."""
from .base import Objective, loss_lr_scale
from .hybrid import HybridLoss
from .score_matching import DDPMLoss, DSMLoss, ISMLoss, LikelihoodTimes, SSMLoss, TimeWeighting

__all__ = ["DDPMLoss", "DSMLoss", "HybridLoss", "ISMLoss", "LikelihoodTimes", "Objective", "SSMLoss", "TimeWeighting",
           "loss_lr_scale"]
