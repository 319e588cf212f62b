"""The LightningModule of a time-dependent noisy classifier ``p_phi(y | x_t, t)`` (for classifier guidance).

Song et al. 2021, App. I.1: the classifier is trained with cross-entropy on perturbed data
``x_t = a(t) x_0 + s(t) z``, ``z ~ N(0, I)``, ``t ~ U(eps, T)``, drawn from the same SDE the score model diffuses
with; its input gradient then guides that score model (:mod:`scorelab.guidance.classifier`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ..core.errors import UserError
from ..core.rng import mix_seed, sample_noise
from ..core.tensors import append_dims
from ..models.noisy_classifier import NoisyClassifier
from ..sde import SDE


class NoisyClassifierModule(L.LightningModule):
    """Train ``classifier`` by cross-entropy on ``(x_t, t, y)``; log loss and accuracy.

    Logged: ``train/loss``, ``train/acc`` (at the step's random times), ``val/loss``, ``val/acc`` (random times, the
    same every validation) and ``val/acc_t<t>`` at each of ``accuracy_times`` (near ``eps`` it is an ordinary
    classifier's accuracy; at ``T`` the data are gone and it falls to the prior's).

    Args:
        classifier: a :class:`~scorelab.models.noisy_classifier.NoisyClassifier`.
        sde: the forward SDE (the same as the score model's that it will guide).
        optimizer: partial ``params -> Optimizer`` (from ``conf/optimizer``).
        scheduler: optional partial ``optimizer -> LRScheduler``, stepped every optimizer step.
        eps: the smallest training time; ``t ~ U(eps, T)``.
        accuracy_times: times at which validation logs the accuracy.
        noise_seed: ``t`` and ``z`` of step ``k`` come from a generator seeded with ``(noise_seed, k, micro-batch,
            rank)``, so training is a function of the position: repeated and resumed runs are identical.
    """

    def __init__(self, classifier: NoisyClassifier, sde: SDE,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, scheduler: Callable | None = None,
                 eps: float = 1e-5, accuracy_times: Sequence[float] = (0.01, 0.25, 0.5, 0.75, 1.0),
                 noise_seed: int = 0):
        super().__init__()
        if not 0.0 < eps < sde.T:
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
        bad = [t for t in accuracy_times if not 0.0 <= float(t) <= sde.T]
        if bad:
            raise ValueError(f"accuracy_times must lie in [0, T={sde.T}], got {bad}")
        self.save_hyperparameters(ignore=["classifier", "sde", "optimizer", "scheduler"])
        self.classifier, self.sde = classifier, sde
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.scheduler_factory = scheduler
        self.accuracy_times = tuple(float(t) for t in accuracy_times)
        self.run_config: dict | None = None  # the resolved training config, stored in every checkpoint

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["scorelab_config"] = self.run_config

    def setup(self, stage: str) -> None:
        """Refuse data whose classes the classifier cannot hold, before the first step."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        classes = getattr(dm, "num_classes", None)
        if not classes:
            raise UserError(f"a noisy classifier needs labelled data, but {type(dm).__name__} has no classes")
        if classes != self.classifier.num_classes:
            raise UserError(f"the data have {classes} classes but the classifier has {self.classifier.num_classes}: "
                            f"set model.net.num_classes={classes}")

    # --- the objective -----------------------------------------------------------------------------
    def perturb(self, x0: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, t)``: ``t ~ U(eps, T)`` and ``x_t = a(t) x0 + s(t) z`` (the SDE's perturbation kernel)."""
        t = sample_noise((x0.shape[0],), x0, generator, kind="uniform") * (self.sde.T - self.hparams.eps) \
            + self.hparams.eps
        return self.perturb_at(x0, t, generator), t

    def perturb_at(self, x0: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """``x_t = a(t) x0 + s(t) z`` at given times ``t [B]``."""
        z = sample_noise(tuple(x0.shape), x0, generator)
        return self.sde.marginal_prob(x0, t)[0] + append_dims(self.sde.marginal_std(t), x0.ndim) * z

    @staticmethod
    def _batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("a noisy classifier trains on batches (x, y) with labels")
        return batch[0], batch[1].long()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0, y = self._batch(batch)
        micro = batch_idx % self.trainer.accumulate_grad_batches
        seed = mix_seed(self.hparams.noise_seed, self.global_step, micro, self.global_rank)
        gen = torch.Generator(device=x0.device).manual_seed(seed)
        torch.manual_seed(mix_seed(seed, 1))  # dropout: a function of the position too
        xt, t = self.perturb(x0, gen)
        logits = self.classifier(xt, t)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), batch_size=x0.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x0, y = self._batch(batch)
        gen = torch.Generator(device=x0.device).manual_seed(batch_idx)  # the same noise every validation
        xt, t = self.perturb(x0, gen)
        logits = self.classifier(xt, t)
        n = x0.shape[0]
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True, batch_size=n, sync_dist=True)
        for t_val in self.accuracy_times:
            t = torch.full((n,), max(t_val, self.hparams.eps), device=x0.device, dtype=x0.dtype)
            pred = self.classifier(self.perturb_at(x0, t, gen), t).argmax(1)
            self.log(f"val/acc_t{t_val:g}", (pred == y).float().mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.classifier.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
