"""Score networks (plain ``nn.Module``s with ``forward(x, noise_label)``) and the ``ScoreModel`` wrapper."""
from .ddpmpp import DDPMpp
from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from .mlp import ScoreMLP
from .ncsnpp import NCSNpp
from .score_model import ScoreModel
from .unet import ScoreUNet

__all__ = [
    "DDPMpp", "GaussianFourierEmbedding", "NCSNpp", "ScoreMLP", "ScoreModel", "ScoreUNet", "SinusoidalEmbedding",
]
