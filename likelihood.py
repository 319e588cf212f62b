"""Likelihood of a checkpoint or the exact toy score over a data split: `python likelihood.py --help` lists options.

Bits/dim (images) or nats (toy points) through the probability-flow ODE. Under
`torchrun --nproc_per_node=N likelihood.py ...` every rank solves its own batches and rank 0 writes the one run
folder.
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from scorelab.cli.entry import run_command, run_job
from scorelab.core.distributed import hydra_run_folder_on_rank_zero

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="likelihood")
def main(cfg: DictConfig) -> None:
    from scorelab.cli.likelihood import likelihood

    run_job(likelihood, cfg)


if __name__ == "__main__":
    with hydra_run_folder_on_rank_zero():
        run_command(main, CONF, "likelihood")
