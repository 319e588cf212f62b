"""FID (or a domain Fréchet distance such as ``fd_mnist``) during training, with EMA weights and a fast sampler."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ..core.console import SamplingProgress, cost_line, say
from ..metrics.evaluation import SampleEvaluator, to_uint8
from ..metrics.frechet import FeatureStats
from ..metrics.reference import DEFAULT_KEEP_FEATURES, reference_stats
from ..sampling.fitted import TABLE_KEY, check_table, read_table_file, with_fitted_grid
from ..sampling.seeded import seeded_batches
from ..viz.plotting import save_image_grid
from .callbacks import PeriodicEvaluation, log_picture, run_dir


def features_domain(features: Any) -> str | None:
    """The data a feature extractor is made for (``"mnist"`` for fd_mnist), None for a general one (Inception).

    Args:
        features: the extractor, its class or factory, or its config (a mapping with ``_target_``).
    """
    if isinstance(features, Mapping) and "_target_" in features:
        from hydra.utils import get_object

        features = get_object(str(features["_target_"]))
    return getattr(features, "domain", None)


def domain_mismatch(features: Any, datamodule: Any) -> str | None:
    """Why the FID callback's domain metric does not apply to this data (None when it does).

    A domain extractor (``features=mnist``) measures only its own dataset: its Fréchet distance on anything else
    has no meaning, and building it may train a classifier on data the run does not have. General extractors
    (Inception) apply to any image data.
    """
    domain = features_domain(features)
    if domain is None or datamodule.domain.accepts_features(domain):
        return None
    return (f"callbacks.fid is off for this run: its features (fd_{domain}) measure {domain} images only, and the "
            f"data are {datamodule.domain.describe()}. For FID on this data pass "
            "features=inception (offline: feature_extractor_weights_path=<Inception weights file>), or "
            "callbacks/fid=none to silence this note")


class FIDCallback(PeriodicEvaluation):
    """Every ``every_n_epochs`` epochs (or ``every_n_steps`` steps) and at the end, draw ``n_samples`` images with
    the EMA weights and score them against the training set's statistics.

    A domain extractor (``fd_mnist``) runs only on its own dataset: on other data the callback stays off with one
    warning (see :func:`domain_mismatch`); ``train.py`` leaves it out before building the extractor.

    Logged to every logger as ``<metric>@<n>`` (e.g. ``fid@2000``, ``fd_mnist@2000``): the sample count is in
    the name because a 2k-sample FID is biased upwards and not comparable with a 50k one. The same step gets a
    grid of the first samples (``fid_samples``). Under DDP every rank generates its share of the seed range
    (sample ``i`` has seed ``seed + i`` on rank ``i mod world_size``), torchmetrics gathers the features, and
    ``compute()`` runs on every rank: no rank waits on another while it samples. The extractor (e.g. ~100 MB of
    Inception) lives in this callback, not in the LightningModule, so checkpoints do not carry it.

    Args:
        sampler: a fast sampler (a few dozen network evaluations per image).
        features: the feature extractor (``conf/features``).
        n_samples: images per evaluation.
        every_n_epochs: evaluation period in epochs (0: not by epoch).
        every_n_steps: evaluation period in optimizer steps (0: not by step).
        at_end: also evaluate when training ends.
        batch_size: images per sampler call on each rank.
        seed: first seed of the range.
        split: the reference split of the training data module.
        ref: a statistics ``.npz`` to use instead of the data module's split.
        ref_count: reference images (None: the whole split).
        cache_dir: where reference statistics are cached (default ``$SCORELAB_CACHE`` or ``~/.cache/scorelab``).
        kid: also compute KID (needs raw reference features; costs memory on every rank).
        fitted_grids: a ``fitted_grids.json`` or checkpoint whose time grids ``fit_grid.py`` fitted; None: those of
            the checkpoint training resumes from. A grid fitted for exactly this sampler and step count replaces its
            own grid (said once in the log).
    """

    def __init__(self, sampler: Callable, features: nn.Module, n_samples: int = 2000, every_n_epochs: int = 1,
                 every_n_steps: int = 0, at_end: bool = True, batch_size: int = 250, seed: int = 0,
                 split: str = "train", ref: str | None = None, ref_count: int | None = None,
                 cache_dir: str | None = None, kid: bool = False, fitted_grids: str | None = None):
        super().__init__(every_n_epochs, every_n_steps, at_end)
        if n_samples < 2 or batch_size < 1:
            raise ValueError(f"FIDCallback needs n_samples >= 2 and batch_size >= 1, got n_samples={n_samples}, "
                             f"batch_size={batch_size}")
        self.sampler, self.features, self.n_samples = sampler, features, n_samples
        self.batch_size, self.seed, self.split, self.ref, self.ref_count = batch_size, seed, split, ref, ref_count
        self.cache_dir, self.kid = cache_dir, kid
        self.evaluator: SampleEvaluator | None = None
        self.off = False  # set in setup when the extractor's domain is not this data's
        self.fitted_grids = read_table_file(fitted_grids) if fitted_grids else None
        self._grid_note: str | None = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Keep the time grids ``fit_grid.py`` stored in the checkpoint training resumes from (checked first)."""
        if self.fitted_grids is None:
            self.fitted_grids = check_table(checkpoint.get(TABLE_KEY), "the checkpoint training resumed from")

    def sampler_for(self, sde, say_it: bool = True):
        """The sampler of an evaluation: on the grid fitted for it and its step count when there is one (said once)."""
        sampler, note = with_fitted_grid(self.sampler, self.fitted_grids, sde)
        if note and note != self._grid_note and say_it:
            print(f"FID callback: {note}", flush=True)
        self._grid_note = note
        return sampler

    def evaluate(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """As :meth:`PeriodicEvaluation.evaluate`; nothing while the callback is off."""
        return {} if self.off else super().evaluate(trainer, pl_module)

    @property
    def name(self) -> str:
        """The logged key, e.g. ``fid@2000``."""
        return f"{self.features.metric_name}@{self.n_samples}"

    # --- set-up: reference statistics once, computed on rank 0 and read by the others -------------------------
    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.evaluator is not None or self.off:
            return
        note = domain_mismatch(self.features, trainer.datamodule) if self.ref is None else None
        if note is not None:
            rank_zero_warn(note)
            self.off = True
            return
        self.features.to(pl_module.device).eval()
        if self.ref is not None:
            reference = FeatureStats.load(self.ref)
        else:
            datamodule = trainer.datamodule
            keep = DEFAULT_KEEP_FEATURES if self.kid else 0
            kwargs = dict(count=self.ref_count, cache=self.cache_dir, device=pl_module.device, keep_features=keep)
            if trainer.is_global_zero:
                reference, _ = reference_stats(datamodule, self.split, self.features, **kwargs)
            trainer.strategy.barrier("fid_reference")
            if not trainer.is_global_zero:
                reference, _ = reference_stats(datamodule, self.split, self.features, log=lambda _: None, **kwargs)
        if not self.kid:
            reference.features = None
        self.evaluator = SampleEvaluator(self.features, reference, reference_rank=trainer.is_global_zero)
        self.evaluator.to(pl_module.device)

    # --- what ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, trainer: L.Trainer, pl_module) -> dict[str, float]:
        """Sample this rank's share, score all shares together (collective), save the grid on rank 0."""
        rank, world = trainer.global_rank, trainer.world_size
        seeds = [self.seed + i for i in range(rank, self.n_samples, world)]
        model = pl_module.score_fn(use_ema=True)
        was_training = model.training
        model.eval()
        grid = []
        data_range = tuple(trainer.datamodule.domain.data_range)
        sampler = self.sampler_for(pl_module.sde, trainer.is_global_zero)
        steps = getattr(sampler, "steps", None)
        if trainer.is_global_zero and not self.history:  # once: what each evaluation costs, and how to stop it
            say(cost_line(f"FID callback ({self.name})", f"{self.n_samples} samples x {steps or '?'} sampler steps "
                          f"in batches of {self.batch_size} per evaluation (every_n_epochs={self.every_n_epochs}, "
                          f"every_n_steps={self.every_n_steps}, at_end={self.at_end})",
                          off="callbacks/fid=null, or fewer: callbacks.fid.n_samples=..."))
        bar = SamplingProgress(len(seeds), -(-len(seeds) // self.batch_size), steps,
                               f"{self.name} at step {trainer.global_step}",
                               trainer.is_global_zero and trainer.progress_bar_callback is not None, every=25)
        try:
            for batch in seeded_batches(sampler, model, pl_module.sde, pl_module._sample_shape(), seeds,
                                        self.batch_size, pl_module.device, on_step=bar.on_step):
                bar.batch_done(len(batch.seeds))
                images = to_uint8(batch.x, data_range)
                self.evaluator.update(images)
                if rank == 0 and sum(len(g) for g in grid) < 64:
                    grid.append(images[:64].cpu())
        finally:
            bar.close()
            model.train(was_training)
        result = self.evaluator.compute(seed=self.seed)  # all-reduce: every rank calls it
        self.evaluator.reset()
        scalars = {self.name: result[self.evaluator.metric_name]}
        if self.evaluator.kernel_name in result:
            scalars[f"{self.evaluator.kernel_name}@{self.n_samples}"] = result[self.evaluator.kernel_name]
        if "class_histogram" in result:  # how far the predicted digits are from an even mix
            counts = torch.tensor(result["class_histogram"], dtype=torch.float64)
            scalars[f"class_gap@{self.n_samples}"] = float((counts / counts.sum() - 1 / len(counts)).abs().max())
        if trainer.is_global_zero:
            path = run_dir(trainer) / "samples" / f"fid_step_{trainer.global_step:07d}.png"
            save_image_grid(torch.cat(grid).float()[:64] / 255.0, path, data_range=(0.0, 1.0))
            log_picture(trainer, "fid_samples", path, trainer.global_step)
        return scalars

