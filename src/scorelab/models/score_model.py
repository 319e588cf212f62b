"""Turn a raw network output into a score for a given SDE: the only place parameterisations live."""
from __future__ import annotations

import torch
from torch import nn

from ..core.tensors import append_dims
from ..sde import SDE

OUTPUTS = ("score", "eps", "x0", "scaled_score", "v", "edm", "velocity")
NOISE_LABELS = ("sde", "t", "log_std", "edm")


def noise_conditioning(sde: SDE, t: torch.Tensor, kind: str) -> torch.Tensor:
    """The scalar a network is conditioned on at time ``t [B]``: ``"sde"`` (the SDE's own convention: ``999 t`` for
    VP/sub-VP and the rectified-flow path, ``log sigma(t)`` for VE and EDM's process), ``"t"``, ``"log_std"``
    (``log s(t)``) or ``"edm"`` (EDM's ``c_noise = log(sigma(t)) / 4``, Karras et al. 2022, Table 1)."""
    if kind == "t":
        return t
    if kind == "log_std":
        return sde.marginal_std(t).log()
    if kind == "edm":
        return sde.sigma(t).log() / 4
    return sde.noise_label(t)


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's preconditioning ``(c_skip, c_out, c_in)`` at noise levels ``sigma`` (Karras et al. 2022, Table 1):
    ``sigma_d^2 / (sigma^2 + sigma_d^2)``, ``sigma sigma_d / sqrt(sigma^2 + sigma_d^2)``, ``1 / sqrt(sigma^2 +
    sigma_d^2)``. ``D(y) = c_skip y + c_out F(c_in y)`` keeps the network's input and target at unit variance."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt()


def unit_scale_input(sde: SDE, x: torch.Tensor, t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``x / sqrt(a(t)^2 sigma_data^2 + s(t)^2)``: EDM's ``c_in``, which keeps ``x_t`` at unit scale at every t."""
    a = append_dims(sde.mean_coeff(t), x.ndim)
    std = append_dims(sde.marginal_std(t), x.ndim)
    return x / torch.sqrt(a**2 * sigma_data**2 + std**2)


class ScoreModel(nn.Module):
    """Wrap a backbone ``net(x, noise_label)`` into a score model ``s_theta(x, t)``.

    Output parameterisations (docs/math.md §3; Song et al. 2021, Appendix C; Karras et al. 2022, Table 1):

    * ``"eps"``: the network predicts the noise, ``s = -net / s(t)`` (DDPM's epsilon-prediction; the
      reference's VP / sub-VP score function);
    * ``"scaled_score"``: the network predicts ``s(t)`` times the score, ``s = net / s(t)`` (the reference's
      ``scale_by_sigma``: its NCSN++ divides its last layer by sigma);
    * ``"score"``: the network output is the score;
    * ``"x0"``: the network predicts clean data, ``s = -(x - a(t) net) / s(t)^2``.
    * ``"v"``: the network predicts ``v = (a eps - s x0) / r`` with ``r = sqrt(a^2 + s^2)`` (Salimans & Ho 2022,
      Sec. 4: ``v = alpha eps - sigma x0`` on VP, where ``r = 1``), so ``x0 = (a x / r - s v) / r``;
    * ``"edm"``: EDM's preconditioning (Karras et al. 2022, Table 1) in the sigma-space view ``y = x / a(t)``,
      ``sigma = s(t) / a(t)``: the network sees ``c_in y`` and the denoiser is ``D = c_skip y + c_out net``
      (:func:`edm_coefficients`; the input is always scaled, whatever ``scale_input``);
    * ``"velocity"``: the network predicts the flow-matching velocity ``dx_t/dt = a' x0 + s' eps`` (Lipman et al.
      2023), which is the probability-flow drift ``f x - g^2 score / 2``, so ``score = 2 (f x - net) / g^2``.

    Each is a function of ``a(t)``, ``s(t)``, ``f(t)`` and ``g(t)`` only, so it serves every SDE.

    Class-conditional backbones (``num_classes > 0``: ``net(x, noise_label, y)``) take class labels ``y``;
    ``y=None`` is the null class, the unconditional score the same network learns under label dropout
    (Ho & Salimans 2022), so every sampler, which calls ``model(x, t)``, samples unconditionally.

    Noise labels the network is conditioned on: ``"sde"`` (the SDE's own convention: ``999 t`` for
    VP/sub-VP and the rectified-flow path, ``log sigma(t)`` for VE and EDM's process), ``"t"``, ``"log_std"``
    (``log s(t)``) or ``"edm"`` (``log(sigma(t)) / 4``, EDM's ``c_noise``).

    Args:
        net: backbone ``(x [B, ...], noise_label [B]) -> [B, ...]``.
        sde: the forward SDE.
        output: the output parameterisation.
        noise_label: what the network is conditioned on.
        scale_input: divide the input by ``sqrt(a^2 sigma_data^2 + s^2)`` (EDM's ``c_in``), which keeps
            VE inputs at unit scale.
        sigma_data: data standard deviation used by ``scale_input``.
        centered: the network sees the input as given (True) or maps data in ``[0, 1]`` to ``[-1, 1]`` first
            (False: the reference's ``data.centered = False``, used by its VE models on ``[0, 1]`` data).
        learn_variance: the backbone outputs twice the data's channels; the second half ``r`` is the reverse-variance
            interpolation ``v = (r + 1) / 2`` of improved DDPM (Nichol & Dhariwal 2021, Eq. 15;
            :mod:`scorelab.objectives.hybrid`),
            returned by ``forward(..., return_variance=True)``. ``forward(x, t)`` stays the score alone.
    """

    def __init__(self, net: nn.Module, sde: SDE, output: str = "eps", noise_label: str = "sde",
                 scale_input: bool = False, sigma_data: float = 0.5, centered: bool = True,
                 learn_variance: bool = False):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if noise_label not in NOISE_LABELS:
            raise ValueError(f"noise_label must be one of {NOISE_LABELS}, got {noise_label!r}")
        self.net, self.sde = net, sde
        self.output, self.noise_label, self.scale_input, self.sigma_data = output, noise_label, scale_input, sigma_data
        self.centered = bool(centered)
        self.learn_variance = bool(learn_variance)
        if self.learn_variance != bool(getattr(net, "learn_variance", False)):
            raise ValueError(f"learn_variance={self.learn_variance} but the backbone {type(net).__name__} has "
                             f"learn_variance={getattr(net, 'learn_variance', False)}: set model.learn_variance (the "
                             "presets pass it on to model.net.learn_variance)")

    def label(self, t: torch.Tensor) -> torch.Tensor:
        """The network's conditioning scalar for time ``t [B]``."""
        return noise_conditioning(self.sde, t, self.noise_label)

    @property
    def num_classes(self) -> int:
        """Classes the backbone is conditioned on (0: unconditional)."""
        return int(getattr(self.net, "num_classes", 0) or 0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                return_variance: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Score estimate; ``x [B, ...]``, ``t [B]``, class labels ``y [B]`` (None: unconditional) -> ``[B, ...]``.

        With ``return_variance`` (models with ``learn_variance`` only): ``(score, v)``, ``v [B, ...]`` the
        interpolation ``(r + 1) / 2`` of the variance channels ``r`` (Nichol & Dhariwal 2021, Eq. 15: the reverse
        variance of a discrete chain is ``exp(v log beta_t + (1 - v) log beta~_t)``, :func:`scorelab.objectives.hybrid.
        interpolated_variance`).
        """
        if return_variance and not self.learn_variance:
            raise ValueError("this model has no learned variance: train it with model.learn_variance=true")
        if y is not None and not self.num_classes:
            raise ValueError("this model has no classes (its network was built with num_classes=0): it takes no "
                             "labels")
        a = append_dims(self.sde.mean_coeff(t), x.ndim)
        std = append_dims(self.sde.marginal_std(t), x.ndim)
        scale = self.scale_input or self.output == "edm"  # EDM's c_in y = x / sqrt(a^2 sigma_d^2 + s^2)
        x_in = x / torch.sqrt(a**2 * self.sigma_data**2 + std**2) if scale else x
        if not self.centered:
            x_in = 2.0 * x_in - 1.0
        out = self.net(x_in, self.label(t)) if y is None else self.net(x_in, self.label(t), y)
        if self.learn_variance:
            out, raw = out.chunk(2, dim=1)
            score = self._score(x, t, out, a, std)
            return (score, (raw + 1.0) / 2.0) if return_variance else score
        return self._score(x, t, out, a, std)

    def _score(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor, a: torch.Tensor,
               std: torch.Tensor) -> torch.Tensor:
        """The score from the network's (mean) output under the parameterisation ``self.output``."""
        if self.output == "eps":
            return -out / std
        if self.output == "scaled_score":
            return out / std
        if self.output == "score":
            return out
        if self.output == "velocity":
            drift, diffusion = self.sde.sde(x, t)  # the drift of a linear SDE is f(t) x
            return 2.0 * (drift - out) / append_dims(diffusion, x.ndim) ** 2
        if self.output == "v":
            r2 = a**2 + std**2
            x0 = (a * x - std * r2.sqrt() * out) / r2
        elif self.output == "edm":
            c_skip, c_out, _ = edm_coefficients(std / a, self.sigma_data)
            x0 = c_skip * (x / a) + c_out * out
        else:  # x0
            x0 = out
        return -(x - a * x0) / std**2

    def score_and_variance(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score, v)``: :meth:`forward` with ``return_variance=True``."""
        return self(x, t, return_variance=True)
