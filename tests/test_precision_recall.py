"""Improved precision and recall (Kynkäänniemi et al. 2019, k = 3) on the features FID already computes."""
import pytest
import torch

from scorelab.metrics import FeatureStats, SampleEvaluator
from scorelab.metrics.evaluation import PrecisionRecall

from .evaluation_utils import ProjectionFeatures


def written_out(fake: torch.Tensor, real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """The paper's definition, by brute force: a point is covered by a set if it lies in the ball around one of the
    set's points whose radius is that point's distance to its k-th nearest other point of the same set."""
    def radii(x):
        return torch.cdist(x, x).sort(dim=1).values[:, k]  # column 0 is the point itself

    def covered(points, centres):
        return (torch.cdist(points, centres) <= radii(centres)[None, :]).any(dim=1).double().mean().item()

    return covered(fake, real), covered(real, fake)


def test_a_set_against_itself_scores_one_and_against_a_disjoint_set_zero():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    prc = PrecisionRecall(x)
    prc.update(x)
    assert prc.compute() == (1.0, 1.0)
    far = PrecisionRecall(x)
    far.update(x + 100.0)
    assert far.compute() == (0.0, 0.0)


def test_precision_and_recall_equal_the_written_out_definition():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(400, 5, generator=g)
    fake = 0.6 * torch.randn(400, 5, generator=g) + 0.3  # a narrower, shifted set: high precision, lower recall
    prc = PrecisionRecall(real)
    for chunk in fake.split(150):
        prc.update(chunk)
    precision, recall = prc.compute()
    assert (precision, recall) == pytest.approx(written_out(fake, real), abs=1e-6)
    assert precision > recall


def test_the_evaluator_reports_precision_and_recall_with_its_distance():
    ex = ProjectionFeatures(3 * 8 * 8)
    g = torch.Generator().manual_seed(2)
    real = torch.randint(0, 256, (500, 3, 8, 8), generator=g, dtype=torch.uint8)
    ref = FeatureStats.from_features(ex(real), keep_features=500, extractor_id=ex.extractor_id,
                                     preprocessing=ex.preprocessing)
    ev = SampleEvaluator(ex, ref, kid_subsets=5, kid_subset_size=100)
    ev.update(real[:250])
    ev.update(real[250:])
    result = ev.compute()
    assert result["precision_proj"] == 1.0 and result["recall_proj"] == 1.0
    ev.reset()
    ev.update(real[:100])  # the reference is cut to the generated count: a fixed random 100 of its 500
    result = ev.compute()
    subset = ev.prc.reference_subset(100)
    assert len(subset) == 100 and not torch.equal(subset, ex(real[:100]))
    expected = written_out(ex(real[:100]), subset)
    assert (result["precision_proj"], result["recall_proj"]) == pytest.approx(expected, abs=1e-6)


def test_the_larger_set_is_cut_to_the_smaller_ones_size():
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(50, 4, generator=g), torch.randn(80, 4, generator=g)
    prc = PrecisionRecall(real)
    prc.update(fake)
    assert prc.compute() == pytest.approx(written_out(fake[:50], real), abs=1e-6)
