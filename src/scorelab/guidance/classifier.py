"""Classifier guidance: sample ``p_0(x | y)`` with an unconditional score model and a noisy classifier.

By Bayes' rule ``p_t(x | y) ∝ p_t(x) p_t(y | x)``, so the conditional score is

    ``grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x)``

(Song et al. 2021, Sec. 5 and App. I.1). With a learned time-dependent classifier ``p_phi(y | x_t, t)`` in place
of ``p_t(y | x)`` and a guidance scale ``w`` (Dhariwal & Nichol 2021, Sec. 4: ``w > 1`` sharpens the classes at
some cost of diversity, ``w = 0`` is unconditional sampling):

    ``s_guided(x, t) = s_theta(x, t) + w grad_x log p_phi(y | x, t)``.

:class:`ClassifierGuidance` is that sum as a score model ``(x, t) -> score``: every sampler calls ``model(x, t)``,
so it works with all of them. :class:`OracleClassifier` is the exact ``p_t(y | x)`` of a toy Gaussian mixture (the
posterior over its components), for tests.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data.toy import GaussianMixture
from ..sde import SDE
from .labels import check_labels, labels_for

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def classifier_log_prob_grad(classifier: Callable, x: torch.Tensor, t: torch.Tensor,
                             y: torch.Tensor) -> torch.Tensor:
    """``grad_x log p(y_i | x_i, t_i)`` for every example ``i``, shape of ``x``.

    ``classifier(x, t)`` returns logits ``[B, K]``. The gradient of ``sum_i log p(y_i | x_i)`` is taken once; it
    equals the per-example gradients because a classifier that acts on each example alone (no batch
    normalisation in training mode) makes example ``j``'s term independent of ``x_i``. Autograd is switched on here
    even when the sampler runs under ``torch.no_grad`` or ``torch.inference_mode``; the result is detached.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)  # a clone made outside inference mode can carry gradients
        t_in = t.detach().clone()
        log_probs = torch.log_softmax(classifier(x_in, t_in), dim=1)
        picked = log_probs.gather(1, y.to(log_probs.device).long()[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, x_in)
    return grad.detach()


class ClassifierGuidance(nn.Module):
    """``s(x, t) + scale * grad_x log p_phi(y | x, t)``: a classifier-guided score model.

    Args:
        score: the unconditional score model ``(x, t) -> score``.
        classifier: the noisy classifier ``(x, t) -> logits [B, K]``, trained on the same SDE's perturbed data.
        labels: the class wanted for each example, ``[B]`` (or one int for all).
        scale: guidance scale ``w`` (0: the unconditional score, 1: Bayes' rule).
    """

    def __init__(self, score: ScoreFn, classifier: Callable, labels: torch.Tensor | int, scale: float = 1.0):
        super().__init__()
        self.score, self.classifier = score, classifier
        self.labels = check_labels(labels, getattr(classifier, "num_classes", None),
                                   what="labels must lie in")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided score ``[B, ...]`` of ``x [B, ...]`` at times ``t [B]``."""
        score = self.score(x, t)
        if self.scale == 0.0:
            return score
        grad = classifier_log_prob_grad(self.classifier, x, t, labels_for(self.labels, x))
        return score + self.scale * grad.to(score.dtype)


class OracleClassifier(nn.Module):
    """The exact noisy classifier ``p_t(y = k | x)`` of a Gaussian mixture diffused by ``sde``: logits
    ``log w_k + log N(x; a(t) mu_k, a(t)^2 Sigma_k + s(t)^2 I)`` (their softmax is the component posterior).

    Args:
        mixture: the data distribution ``p_0``, its components the classes.
        sde: the forward SDE.
    """

    def __init__(self, mixture: GaussianMixture, sde: SDE):
        super().__init__()
        self.mixture, self.sde = mixture, sde

    @property
    def num_classes(self) -> int:
        return self.mixture.n_components

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of ``x [B, D]`` at times ``t [B]``."""
        return self.mixture.perturbed_component_log_prob(x, self.sde.mean_coeff(t), self.sde.marginal_std(t))
