"""Callbacks: sample pictures during training and exact metrics for toy data."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from ..core.console import SamplingProgress
from ..core.distributed import run_and_gather
from ..core.io import write_text_atomic
from ..sampling.base import describe_sampler
from ..sampling.seeded import NonFiniteSamplesError, draw_seeded


def run_dir(trainer: L.Trainer) -> Path:
    """The run folder: the Trainer's ``default_root_dir`` (set to Hydra's output dir by ``conf/trainer``)."""
    return Path(trainer.default_root_dir)


def draw_finite(pl_module, sampler: Callable, seeds: Sequence[int],
                shape: Sequence[int] | None = None, progress: str | None = None) -> tuple[torch.Tensor, int]:
    """Samples of the EMA weights, sample ``k`` from seed ``seeds[k]`` (as ``sample.py`` draws them,
    :func:`~scorelab.sampling.seeded.draw_seeded`), refusing samples that hold NaN/Inf.

    Args:
        pl_module: the :class:`~scorelab.lit.module.ScoreModule`.
        sampler: a scorelab sampler.
        seeds: one seed per sample.
        shape: of one sample (default: the trainer's data module's ``sample_shape``).
        progress: a description: show a progress bar per sampler step under it (rank 0 of the trainer).

    Returns:
        ``(samples [len(seeds), ...], nfe)``.

    Raises:
        NonFiniteSamplesError: naming the sampler, the sampler step and the training step.
    """
    model = pl_module.score_fn(use_ema=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            shape = tuple(shape) if shape is not None else pl_module._sample_shape()
            bar = SamplingProgress(len(seeds), 1, getattr(sampler, "steps", None), progress or "",
                                   enabled=progress is not None and _shows_progress(pl_module), every=25)
            with bar:
                x, nfe, watch = draw_seeded(sampler, model, pl_module.sde, shape, seeds, pl_module.device,
                                            on_step=bar.on_step)
    finally:
        model.train(was_training)
    where = watch.where(x, "sampler step")
    if where is not None:
        raise NonFiniteSamplesError(f"{sampler!r} produced NaN/Inf {where} from the EMA weights of training step "
                                    f"{pl_module.global_step}")
    return x, nfe


def _shows_progress(pl_module) -> bool:
    """Whether the trainer of ``pl_module`` shows progress (its progress bar is on) on this rank (rank 0)."""
    trainer = getattr(pl_module, "_trainer", None)
    return trainer is not None and trainer.is_global_zero and trainer.progress_bar_callback is not None


def draw_shared(trainer: L.Trainer, pl_module, sampler: Callable, n: int, seed: int,
                progress: str | None = None) -> tuple[torch.Tensor, int]:
    """``n`` samples with seeds ``seed .. seed + n - 1`` (:func:`draw_finite`), split over the data-parallel ranks
    and gathered on every rank (CPU tensor ``[n, ...]``).

    Rank ``r`` of ``W`` draws samples ``r, r + W, ...``, each from its own seed, so the gathered samples are those of
    a 1-process run and of ``sample.py seed=<seed>`` (up to floating-point differences of the network on other
    batch sizes; adaptive ODE solvers, whose step sizes depend on the batch, agree only to their tolerance). Every
    rank samples, none waits for minutes at the next collective while another one samples, and the work is ``W``
    times faster. A failure on any rank (NaN/Inf samples included) is raised on every rank.

    ``progress``: a description, for a progress bar on rank 0 (of its share).

    Returns:
        ``(samples [n, ...] on the CPU, NFE)``.
    """
    world, rank = trainer.world_size, trainer.global_rank
    if world <= 1:
        x, nfe = draw_finite(pl_module, sampler, range(seed, seed + n), progress=progress)
        return x.cpu(), nfe
    rows = list(range(rank, n, world))

    def mine() -> tuple[torch.Tensor | None, int, str | None]:
        if not rows:
            return None, 0, None
        try:
            x, nfe = draw_finite(pl_module, sampler, [seed + r for r in rows], progress=progress)
        except NonFiniteSamplesError as exc:  # every rank must take the same decision: sent to all
            return None, 0, str(exc)
        return x.cpu(), nfe, None

    parts = run_and_gather(mine)
    errors = [err for _, _, err in parts if err]
    if errors:
        raise NonFiniteSamplesError(errors[0])
    first = next(x for x, _, _ in parts if x is not None)
    out = torch.empty((n, *first.shape[1:]), dtype=first.dtype)
    for r, (x, _, _) in enumerate(parts):
        if x is not None:
            out[r::world] = x
    return out, max(nfe for _, nfe, _ in parts)


def log_picture(trainer: L.Trainer, key: str, path: Path, step: int) -> None:
    """Send a PNG to every active logger that takes images (W&B, TensorBoard)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            import numpy as np
            from PIL import Image

            image = np.asarray(Image.open(path).convert("RGB"))
            logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")


class SampleCallback(L.Callback):
    """Every ``every_n_epochs`` epochs and at the end of training, sample with EMA weights and a fixed seed,
    save ``samples/epoch_<NNNN>.png`` (scatter or image grid) in the run folder and log it to every logger.

    The fixed seed draws the same initial noise every time, so the pictures show progress over training. Under DDP
    every rank draws its share and rank 0 draws the picture (:func:`draw_shared`): the picture is the 1-process one,
    and no rank waits at the next collective while another samples.

    Args:
        sampler: a ``PCSampler`` or ``ODESampler``.
        n_samples: number of points (2-D) or images (at most 64 are shown) to draw.
        every_n_epochs: sampling period in epochs (0: only at the end).
        seed: seed of the sampling noise.
    """

    def __init__(self, sampler: Callable, n_samples: int = 2000, every_n_epochs: int = 0, seed: int = 0):
        self.sampler, self.n_samples, self.every_n_epochs, self.seed = sampler, n_samples, every_n_epochs, seed
        self.last_path: Path | None = None

    def _draw(self, trainer: L.Trainer, pl_module, tag: str) -> None:
        try:
            x, _ = draw_shared(trainer, pl_module, self.sampler, self.n_samples, self.seed,
                               progress=f"sample picture ({self.n_samples} samples)")
        except NonFiniteSamplesError as exc:
            rank_zero_warn(f"{exc}; samples/{tag}.png was not written")
            return
        if not trainer.is_global_zero:
            return
        path = run_dir(trainer) / "samples" / f"{tag}.png"
        trainer.datamodule.domain.preview(x, path, title=f"{tag}, step {trainer.global_step}: "
                                                         f"{describe_sampler(self.sampler)}")
        self.last_path = path
        log_picture(trainer, "samples", path, trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0 and not trainer.sanity_checking:
            self._draw(trainer, pl_module, f"epoch_{epoch:04d}")

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._draw(trainer, pl_module, "final")


class ToyMetricsCallback(L.Callback):
    """At the end of training on a toy mixture, sample with EMA weights and write ``metrics.json``: mode weights,
    exact NLL of the samples under the true mixture, the true entropy (the NLL floor), their gap, and the energy
    distance to fresh true samples. Also logged to every logger under ``toy/``. Does nothing for other data.

    Samples holding NaN/Inf are not scored: ``metrics.json`` then records the error (named sampler and steps) and
    no numbers, and a warning says so. Under DDP every rank draws its share (:func:`draw_shared`); rank 0 scores.

    Args:
        sampler: the sampler to evaluate with.
        n_samples: number of samples (10000: mode weights to +-0.004 standard error).
        seed: seed of the sampling noise.
    """

    def __init__(self, sampler: Callable, n_samples: int = 10_000, seed: int = 1):
        self.sampler, self.n_samples, self.seed = sampler, n_samples, seed
        self.metrics: dict | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        domain = trainer.datamodule.domain
        if not domain.measures_samples:
            return
        path = run_dir(trainer) / "metrics.json"
        try:
            x, nfe = draw_shared(trainer, pl_module, self.sampler, self.n_samples, self.seed,
                                 progress=f"toy metrics ({self.n_samples} samples)")
        except NonFiniteSamplesError as exc:
            rank_zero_warn(f"{exc}; {path} records the error instead of metrics")
            if trainer.is_global_zero:
                write_text_atomic(path, json.dumps({"error": str(exc), "global_step": trainer.global_step,
                                                    "sampler": repr(self.sampler)}, indent=2))
            return
        if not trainer.is_global_zero:
            return
        metrics = domain.sample_metrics(x.cpu(), self.seed)
        metrics.update(nfe=nfe, global_step=trainer.global_step, sampler=repr(self.sampler))
        self.metrics = metrics
        write_text_atomic(path, json.dumps(metrics, indent=2))
        scalars = {f"toy/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        scalars.update({f"toy/mode_weight_{i}": w for i, w in enumerate(metrics["mode_weights"])})
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)


class PeriodicEvaluation(L.Callback):
    """Base of callbacks that measure the model every ``every_n_epochs`` epochs or ``every_n_steps`` steps and at
    the end of training (at most once per step), keeping a history that checkpoints save.

    Subclasses implement :meth:`measure`, which runs on every rank (it may hold collectives) and returns the
    scalars to log; this class logs them on rank 0 to every logger and puts them in ``trainer.callback_metrics``.

    Args:
        every_n_epochs: period in epochs (0: not by epoch).
        every_n_steps: period in optimizer steps (0: not by step).
        at_end: also measure when training ends (not in ``fast_dev_run``).
    """

    def __init__(self, every_n_epochs: int = 1, every_n_steps: int = 0, at_end: bool = True):
        if every_n_epochs < 0 or every_n_steps < 0:
            raise ValueError(f"periods must be >= 0, got every_n_epochs={every_n_epochs}, "
                             f"every_n_steps={every_n_steps}")
        self.every_n_epochs, self.every_n_steps, self.at_end = every_n_epochs, every_n_steps, at_end
        self.history: list[dict] = []
        self._last_step = -1

    def measure(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """Compute the scalars to log at this step (called on every rank)."""
        raise TypeError(f"{type(self).__name__} must define measure(trainer, pl_module)")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.at_end and not trainer.fast_dev_run:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """Measure now (once per step), log on rank 0, record in the history; returns the scalars."""
        if trainer.global_step == self._last_step and self.history:
            return self.history[-1]["scalars"]
        self._last_step = trainer.global_step
        scalars = self.measure(trainer, pl_module)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        self.history.append({"step": trainer.global_step, "scalars": scalars})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
        return scalars

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
