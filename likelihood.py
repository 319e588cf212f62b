"""Likelihood of a checkpoint or the exact toy score over a data split: `python likelihood.py --help` lists options.

Bits/dim (images) or nats (toy points) through the probability-flow ODE. Under
`torchrun --nproc_per_node=N likelihood.py ...` every rank solves its own batches and rank 0 writes the one run
folder.
"""
import hydra
from omegaconf import DictConfig

from scorelab.cli.errors import run_or_exit
from scorelab.distributed import hydra_run_folder_on_rank_zero


@hydra.main(version_base="1.3", config_path="conf", config_name="likelihood")
def main(cfg: DictConfig) -> None:
    from scorelab.cli.likelihood import likelihood

    run_or_exit(likelihood, cfg)


if __name__ == "__main__":
    with hydra_run_folder_on_rank_zero():
        main()
