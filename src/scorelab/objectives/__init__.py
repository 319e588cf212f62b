"""Training objectives: denoising, implicit and sliced score matching, DDPM's L_simple, and the hybrid objective
with its variational bound (``scorelab.objectives.vlb``)."""
from .hybrid import HybridLoss
from .score_matching import DDPMLoss, DSMLoss, ISMLoss, LikelihoodTimes, SSMLoss, TimeWeighting, loss_lr_scale

__all__ = ["DDPMLoss", "DSMLoss", "HybridLoss", "ISMLoss", "LikelihoodTimes", "SSMLoss", "TimeWeighting",
           "loss_lr_scale"]
