"""The LightningModule: a swappable score network and SDE trained by denoising score matching."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from ..core.rng import ShardedGenerator, data_parallel_rows, mix_seed, sample_noise
from ..guidance.labels import BoundLabels, check_labels
from ..models.score_model import ScoreModel
from ..objectives.base import loss_lr_scale
from ..objectives.score_matching import DSMLoss
from ..sde import SDE
from .ema import EMA
from .nonfinite import NonFiniteGuard


class ScoreModule(L.LightningModule):
    """Train ``score_model`` with a score-matching loss; evaluate and sample with its EMA weights.

    Args:
        score_model: a :class:`~scorelab.models.ScoreModel` (backbone + parameterisation for ``sde``).
        sde: the forward SDE.
        loss: the training objective, ``loss(score_fn, x0) -> scalar`` (default :class:`DSMLoss`).
        optimizer: partial ``params -> Optimizer`` (from ``conf/optimizer``).
        scheduler: optional partial ``optimizer -> LRScheduler``, stepped every optimizer step.
        ema_decay: EMA rate (0.999 toy / VE, 0.9999 VP images).
        ema_warmup: use the reference's ``min(decay, (1 + n) / (10 + n))`` warm-up.
        compile: ``torch.compile`` the backbone used for training (the EMA copy stays eager).
        channels_last: keep image batches and weights in channels-last memory format.
        score_error_times: times at which validation logs the error against an exact oracle score, when the
            data module has one (toy mixtures): ``E ||s(t) (s_theta - s*)||^2``, the eps-space error.
        noise_seed: the training noise (t and z of the loss) of step k is drawn from a generator seeded with
            ``(noise_seed, k)`` for the whole global batch (each rank keeps its examples' rows), and the global random
            generator (dropout) is reseeded from ``(noise_seed, k, rank)`` before every step, so a resumed run
            continues exactly as an uninterrupted one would, and W ranks match one process with the global batch.
        nonfinite: what a step with a NaN/Inf loss or gradient does: ``"skip"`` (no optimizer or EMA update,
            counted in ``train/skipped_steps``) or ``"stop"`` (an error naming the step; checkpoints are kept).
        nonfinite_patience: with ``"skip"``, stop after this many non-finite steps in a row.
        label_dropout: class-conditional models (``score_model.num_classes > 0``, trained on batches
            ``(x, y)``): the probability ``p_uncond`` that an example's label is replaced by the null class, so that
            one network learns the conditional and the unconditional score for classifier-free guidance (Ho &
            Salimans 2022, Alg. 1). Drawn from the step's generator (its own stream), so resumed and data-parallel
            runs stay exact. Unconditional models ignore it.
    """

    def __init__(self, score_model: ScoreModel, sde: SDE, loss: Callable | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, scheduler: Callable | None = None,
                 ema_decay: float = 0.999, ema_warmup: bool = True, compile: bool = False,
                 channels_last: bool = False, score_error_times: Sequence[float] = (0.05, 0.2, 0.5, 0.9),
                 noise_seed: int = 0, nonfinite: str = "skip", nonfinite_patience: int = 20,
                 label_dropout: float = 0.0):
        super().__init__()
        if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float)) \
                or not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"module.label_dropout must be a probability in [0, 1], got {label_dropout!r}")
        self.save_hyperparameters(ignore=["score_model", "sde", "loss", "optimizer", "scheduler"])
        self.score_model, self.sde = score_model, sde
        self.loss = loss if loss is not None else DSMLoss(sde)
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=2e-4))
        self.scheduler_factory = scheduler
        self.channels_last = channels_last
        if channels_last:
            self.score_model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.score_model, decay=ema_decay, warmup=ema_warmup)
        # The compiled module is kept out of the module tree so state dicts and the EMA copy see plain weights.
        object.__setattr__(self, "_train_model", torch.compile(self.score_model) if compile else self.score_model)
        self.score_error_times = tuple(score_error_times)
        self.run_config: dict | None = None  # the resolved training config, stored in every checkpoint
        self.nonfinite_guard = NonFiniteGuard(nonfinite, nonfinite_patience)
        self._skip_update = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["scorelab_config"] = self.run_config
        checkpoint["scorelab_nonfinite"] = self.nonfinite_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite_guard.load_state_dict(checkpoint.get("scorelab_nonfinite", {}))

    # --- scores ----------------------------------------------------------------------------------
    def score_fn(self, use_ema: bool = True) -> nn.Module:
        """The score model used for evaluation and sampling (EMA weights by default)."""
        return self.ema.module if use_ema else self.score_model

    @torch.no_grad()
    def sample(self, sampler: Callable, n: int, generator: torch.Generator | None = None, use_ema: bool = True,
               shape: Sequence[int] | None = None, callback: Callable | None = None) -> tuple[torch.Tensor, int]:
        """Draw ``n`` samples with ``sampler`` (a ``PCSampler`` or ``ODESampler``); returns ``(x, nfe)``."""
        shape = tuple(shape) if shape is not None else self._sample_shape()
        model = self.score_fn(use_ema)
        was_training = model.training
        model.eval()
        try:
            return sampler(model, self.sde, (n, *shape), generator=generator, device=self.device, callback=callback)
        finally:
            model.train(was_training)

    def _sample_shape(self) -> tuple[int, ...]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "sample_shape"):
            raise ValueError("sample shape unknown: pass shape=... or attach a data module with sample_shape")
        return tuple(dm.sample_shape)

    # --- training --------------------------------------------------------------------------------
    def _inputs(self, batch: Any) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional score model (0: unconditional)."""
        return self.score_model.num_classes

    def _labels(self, batch: Any, x: torch.Tensor) -> torch.Tensor:
        """The class labels ``[B]`` of a batch ``(x, y)`` for a conditional model, checked against its classes."""
        y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if y is None:
            raise ValueError(f"the model is class-conditional ({self.num_classes} classes) but the batches carry no "
                             "labels")
        try:
            return check_labels(y, self.num_classes, what="labels must lie in").to(x.device)
        except ValueError as exc:
            raise ValueError(f"{exc} (unlabelled data cannot train a conditional model)") from None

    def drop_labels(self, y: torch.Tensor, generator) -> torch.Tensor:
        """``y`` with each label replaced by the null class ``num_classes`` with probability ``label_dropout``."""
        p = self.hparams.label_dropout
        if p <= 0:
            return y
        drop = sample_noise(tuple(y.shape), torch.empty(0, device=y.device), generator, kind="uniform") < p
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def _score_of_batch(self, model: nn.Module, batch: Any, x: torch.Tensor, generator=None) -> Callable:
        """The score function the loss trains: ``model`` itself, or with the batch's labels bound (conditional)."""
        if not self.num_classes:
            return model
        y = self._labels(batch, x)
        return BoundLabels(model, self.drop_labels(y, generator) if generator is not None else y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = self._inputs(batch)
        torch.manual_seed(self._position_seed(batch_idx, stream=1))  # dropout: a function of the position too
        label_gen = self._step_generator(x.device, batch_idx, x.shape[0], stream=1) if self.num_classes else None
        score = self._score_of_batch(self._train_model, batch, x, label_gen)
        loss = self.loss(score, x, generator=self._step_generator(x.device, batch_idx, x.shape[0]))
        self.nonfinite_guard.observe_loss(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _position_seed(self, batch_idx: int, stream: int) -> int:
        """A seed of (noise seed, optimizer step, micro-batch, rank, stream): distinct per rank and per step."""
        micro = batch_idx % self.trainer.accumulate_grad_batches
        return mix_seed(self.hparams.noise_seed, self.global_step, micro, self.global_rank, stream)

    def _step_generator(self, device: torch.device, batch_idx: int, local: int,
                        stream: int = 0) -> torch.Generator | ShardedGenerator:
        """Loss noise of an optimizer step: a pure function of the training position.

        The noise belongs to the step's *global* batch (``local`` examples x ``world`` ranks x ``accumulate``
        micro-batches): every rank draws the noise of all of them from the step's generator and keeps the rows of
        its own examples (micro-batch ``m`` of rank ``r`` holds positions ``m * local * W + r + W * j``, the way the
        project's samplers deal out the data), so example ``i`` of the global batch gets the same noise on any
        number of devices and with any accumulation: ``W`` ranks x ``A`` micro-batches of ``B`` train exactly as one
        process with one batch of ``W * A * B``. One device without accumulation draws directly. ``stream`` 0 is
        the loss noise, stream 1 the label dropout: independent draws of the same position.
        """
        seed = (self.hparams.noise_seed * 1_000_003 + self.global_step) * 1009 * 4099
        if stream:
            seed = mix_seed(self.hparams.noise_seed, self.global_step, stream)
        gen = torch.Generator(device=device).manual_seed(seed % (2**63))
        world, accumulate = self.trainer.world_size, self.trainer.accumulate_grad_batches
        if world <= 1 and accumulate <= 1:
            return gen
        micro = batch_idx % accumulate
        rows = data_parallel_rows(local, self.global_rank, world)
        offset = micro * local * world
        return ShardedGenerator(gen, [offset + i for i in rows], local * world * accumulate)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply the ``nonfinite`` policy: a NaN/Inf loss or gradient skips this update or stops training."""
        self._skip_update = self.nonfinite_guard.check(self, optimizer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:  # once per optimizer step
            if not self._skip_update:
                self.ema.update_parameters(self.score_model)
            self._skip_update = False
            self.log("train/skipped_steps", float(self.nonfinite_guard.skipped), batch_size=1)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = self._inputs(batch)
        gen = torch.Generator(device=x.device).manual_seed(batch_idx)  # the same noise every validation
        model = self.score_fn(use_ema=True)
        loss = self.loss(self._score_of_batch(model, batch, x), x, generator=gen)  # conditional: true labels
        self.log("val/loss", loss, prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        domain = datamodule.domain if datamodule is not None else None
        if domain is not None and domain.measures_samples:  # data of a known mixture: its exact score
            oracle = domain.exact_score(self.sde)
            for t_val in self.score_error_times:
                t = torch.full((x.shape[0],), t_val, device=x.device, dtype=x.dtype)
                xt = self.sde.marginal_prob(x, t)[0] + self.sde.marginal_std(t)[:, None] * torch.randn(
                    x.shape, generator=gen, device=x.device, dtype=x.dtype)
                err = ((model(xt, t) - oracle(xt, t).to(x.dtype)) * self.sde.marginal_std(t)[:, None]) ** 2
                self.log(f"val/score_error_t{t_val:g}", err.sum(1).mean(), batch_size=x.shape[0], sync_dist=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.score_model.parameters())
        scale = loss_lr_scale(self.loss)
        if scale != 1.0:  # before the scheduler, which takes its base rates from the groups
            for group in optimizer.param_groups:
                group["lr"] *= scale
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
