"""Score networks (plain ``nn.Module``s with ``forward(x, noise_label)``) and the ``ScoreModel`` wrapper.

Every network declares ``data_arguments(sample_shape)``: the constructor arguments the data fix (channels, size,
dimension), which the commands fill in from the data module.
"""
from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from .mlp import ScoreMLP
from .score_model import ScoreModel
from .unet import ScoreUNet

__all__ = ["GaussianFourierEmbedding", "ScoreMLP", "ScoreModel", "ScoreUNet", "SinusoidalEmbedding"]
