"""Picture: the linear and the cosine VP schedules, ᾱ(t) and log-SNR(t), with their 1000-step DDPM chains.

Plots, for ``scorelab.sde.VPSDE`` (linear β(t), β_min = 0.1, β_max = 20) and ``scorelab.sde.CosineVPSDE``
(Nichol & Dhariwal 2021, Eq. 17): ᾱ(t) = mean_coeff(t)² and λ(t) = log(a(t)/s(t)) (``sde.log_snr``) over
t in (0, T], and, as dots, the discrete chains' ᾱ_i from ``sde.ddpm_alphas_cumprod(1000)`` at t = i/1000 · T.
Writes a PNG.

    OMP_NUM_THREADS=1 python bench/schedules.py --out docs/schedules.png
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scorelab.sde import VPSDE, CosineVPSDE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/schedules.png")
    args = parser.parse_args()
    sdes = {"linear VP (β 0.1→20)": (VPSDE(), "C0"), "cosine VP (s = 0.008)": (CosineVPSDE(), "C1")}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.4), dpi=90)
    for name, (sde, colour) in sdes.items():
        T = float(sde.T)
        t = torch.linspace(1e-3, T, 500, dtype=torch.float64)
        abar = sde.mean_coeff(t) ** 2
        ax1.plot(t, abar, color=colour, label=f"{name}, T = {T:.4g}")
        ax2.plot(t, sde.log_snr(t), color=colour)
        chain = sde.ddpm_alphas_cumprod(1000)
        if chain is not None:
            ti = torch.arange(1, 1001, dtype=torch.float64) / 1000 * T
            ax1.plot(ti[::40], chain.double()[::40], "o", ms=3, color=colour, alpha=0.6)
    ax1.plot([], [], "o", ms=3, color="grey", label="discrete chain ᾱ_i (N = 1000)")
    ax1.set(title="Signal kept: ᾱ(t) = a(t)²", xlabel="t", ylabel="ᾱ(t)")
    ax2.set(title="log-SNR λ(t) = log(a(t) / s(t))", xlabel="t", ylabel="λ(t)")
    fig.legend(*ax1.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=10.5, frameon=False)
    for ax in (ax1, ax2):  # legible at README width
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(13)
        ax.xaxis.label.set_fontsize(12)
        ax.yaxis.label.set_fontsize(12)
        ax.tick_params(labelsize=10.5)
    fig.tight_layout(rect=(0, 0.09, 1, 1))  # one legend for both panels, beneath them
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
