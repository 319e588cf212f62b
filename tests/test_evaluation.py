"""FID / KID: exact Fréchet distances, the torchmetrics path, offline Inception weights, the statistics cache and
fid.py end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from scorelab.core.errors import UserError
from scorelab.metrics import FeatureStats, SampleEvaluator, StatsMismatchError, frechet_distance
from scorelab.metrics.inception import InceptionFeatures
from scorelab.metrics.reference import reference_stats

from .evaluation_utils import ProjectionFeatures, write_images_npz, write_random_inception_weights
from .platform_utils import run_script


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception_random.pth")


# --- the Fréchet distance against closed forms ---------------------------------------------------------------
def test_frechet_distance_of_commuting_gaussians_equals_closed_form():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    l1, l2 = rng.uniform(0.2, 3.0, 6), rng.uniform(0.2, 3.0, 6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    # Shared eigenvectors: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum_i (sqrt(l1_i) - sqrt(l2_i))^2
    exact = ((m1 - m2) ** 2).sum() + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    got = frechet_distance(m1, q @ np.diag(l1) @ q.T, m2, q @ np.diag(l2) @ q.T)
    assert got == pytest.approx(exact, rel=1e-10)


def test_frechet_distance_of_general_gaussians_matches_matrix_square_root():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    exact = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(exact, rel=1e-9)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)


def test_evaluator_fid_is_torchmetrics_fid_of_the_statistics():
    """The torchmetrics path (reference moments loaded into its states) equals the distance of the statistics."""
    ex = ProjectionFeatures(3 * 8 * 8)
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (600, 3, 8, 8), generator=g, dtype=torch.uint8)
    fake = torch.randint(30, 226, (400, 3, 8, 8), generator=g, dtype=torch.uint8)
    ref = FeatureStats.from_features(ex(real), extractor_id=ex.extractor_id, preprocessing=ex.preprocessing)
    ev = SampleEvaluator(ex, ref)
    for i in range(0, 400, 150):
        ev.update(fake[i:i + 150])
    mine = FeatureStats.from_features(ex(fake), extractor_id=ex.extractor_id, preprocessing=ex.preprocessing)
    result = ev.compute()
    assert result["n"] == 400 and result["n_reference"] == 600
    assert result["fd_proj"] == pytest.approx(ref.distance(mine), rel=1e-9)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise():
    ex = ProjectionFeatures(3 * 8 * 8)
    g = torch.Generator().manual_seed(2)
    real = torch.randint(0, 256, (2000, 3, 8, 8), generator=g, dtype=torch.uint8)
    ref = FeatureStats.from_features(ex(real), keep_features=2000, extractor_id=ex.extractor_id,
                                     preprocessing=ex.preprocessing)
    values = []
    for noise in (0.0, 10.0, 25.0, 50.0, 100.0):
        ev = SampleEvaluator(ex, ref, kid_subsets=10, kid_subset_size=500)
        noisy = (real.float() + noise * torch.randn(real.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        ev.update(noisy)
        values.append(ev.compute()["fd_proj"])
    assert abs(values[0]) < 1e-9
    assert all(a < b for a, b in zip(values[:-1], values[1:], strict=True)), values


# --- Inception: offline weights ------------------------------------------------------------------------------
def test_inception_loads_a_local_weights_file_with_the_network_unreachable(offline, inception_weights):
    ex = InceptionFeatures(weights_path=inception_weights)
    images = torch.randint(0, 256, (3, 1, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    f = ex(images)  # grayscale of any size: repeated to 3 channels, resized to 299
    assert f.shape == (3, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all() and f.std() > 0
    assert torch.equal(f, ex(images))
    assert ex.extractor_id.startswith("inception-v3-compat-2048:")
    with pytest.raises(ValueError, match="uint8 images"):
        ex(images.float())


def test_inception_without_weights_or_network_names_both_ways_out(offline, tmp_path):
    with pytest.raises(UserError) as err:
        InceptionFeatures()
    message = str(err.value)
    assert "download" in message and "feature_extractor_weights_path" in message and "\n" not in message
    with pytest.raises(UserError, match="does not exist"):
        InceptionFeatures(weights_path=tmp_path / "missing.pth")


def test_inception_refuses_a_file_that_is_not_its_weights(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(UserError, match="does not hold Inception-v3 weights"):
        InceptionFeatures(weights_path=bad)


def test_inception_self_fid_is_zero_and_noise_raises_it(inception_weights):
    ex = InceptionFeatures(weights_path=inception_weights)
    g = torch.Generator().manual_seed(3)
    real = torch.randint(0, 256, (6, 3, 16, 16), generator=g, dtype=torch.uint8)
    ref = FeatureStats.from_features(ex(real), extractor_id=ex.extractor_id, preprocessing=ex.preprocessing)
    ev = SampleEvaluator(ex, ref)
    ev.update(real)
    assert abs(ev.compute()["fid"]) < 1e-3
    ev.reset()
    ev.update((real.float() + 60 * torch.randn(real.shape, generator=g)).clamp(0, 255).to(torch.uint8))
    assert ev.compute()["fid"] > 1e-2


# --- the statistics cache ------------------------------------------------------------------------------------
class _Images:
    """The image part of a data module: ``dataset_name`` and ``images(split)``."""

    def __init__(self, images: torch.Tensor):
        from scorelab.domains import Images

        self.images_, self.dataset_name = images, "fake"
        self.domain = Images("fake", (-1.0, 1.0))

    def images(self, split):
        return self.images_, None


def test_reference_cache_is_computed_once_and_refuses_a_mismatch(tmp_path):
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    dm, ex = _Images(images), ProjectionFeatures(3 * 8 * 8)
    stats, path = reference_stats(dm, "train", ex, cache=tmp_path, keep_features=20, log=lambda _: None)
    calls = ex.calls
    again, again_path = reference_stats(dm, "train", ex, cache=tmp_path, log=lambda _: None)
    assert again_path == path and ex.calls == calls  # read from the cache, not recomputed
    assert again.count == 50 and again.features.shape == (20, 16) and np.allclose(again.mu, stats.mu)
    with pytest.raises(StatsMismatchError, match="feature extractor"):
        FeatureStats.load(path).check("another-extractor", ex.preprocessing)
    with pytest.raises(StatsMismatchError, match="preprocessing"):
        FeatureStats.load(path).check(ex.extractor_id, "another preprocessing")
    with pytest.raises(StatsMismatchError, match="image count"):
        FeatureStats.load(path).check(ex.extractor_id, ex.preprocessing, count=49)
    # a file renamed onto another extractor's cache name is refused, never reused
    other = ProjectionFeatures(3 * 8 * 8, seed=1)
    from scorelab.metrics.reference import stats_file

    stats_file("fake", "train", other.extractor_id, cache=tmp_path).write_bytes(path.read_bytes())
    with pytest.raises(StatsMismatchError, match="feature extractor"):
        reference_stats(dm, "train", other, cache=tmp_path, log=lambda _: None)


def test_statistics_file_round_trip_and_bad_files(tmp_path):
    f = torch.randn(30, 4, dtype=torch.float64)
    stats = FeatureStats.from_features(f, extractor_id="e", preprocessing="p", dataset="d", split="train")
    loaded = FeatureStats.load(stats.save(tmp_path / "s.npz"))
    assert np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma)
    assert (loaded.count, loaded.extractor_id, loaded.dataset, loaded.split) == (30, "e", "d", "train")
    assert np.allclose(loaded.sigma, np.cov(f.numpy(), rowvar=False))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot be read"):
        FeatureStats.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", mu=np.zeros(3))
    with pytest.raises(UserError, match="not a scorelab statistics file"):
        FeatureStats.load(tmp_path / "other.npz")


# --- fid.py end to end -------------------------------------------------------------------------------------
@pytest.fixture
def fid_env(tmp_path, monkeypatch, inception_weights):
    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "cache"))
    data = write_images_npz(tmp_path / "real.npz", 12)
    common = [f"feature_extractor_weights_path={inception_weights}", "progress=false", "kid_subsets=5"]
    res = run_script("fid.py", ["mode=ref", "data=npz", f"data.path={data}", *common], cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (stats_path,) = list((tmp_path / "cache" / "fid_stats").glob("npz-real-*_train_all_inception-*.npz"))
    return tmp_path, stats_path, common


def test_fid_cli_scores_a_folder_of_pngs_and_an_npz(fid_env):
    tmp_path, stats_path, common = fid_env
    assert FeatureStats.load(stats_path).count == 12
    from scorelab.data.sample_files import write_png_images

    x = np.load(tmp_path / "real.npz")["x"][:6]
    write_png_images(torch.from_numpy(x).permute(0, 3, 1, 2), tmp_path / "pngs", 0)
    np.savez(tmp_path / "fake.npz", arr_0=255 - x)  # guided-diffusion's key, uint8 [N, H, W, C]
    scores = {}
    for samples, out in ((tmp_path / "pngs", tmp_path / "pngs_fid.json"), (tmp_path / "fake.npz",
                                                                           tmp_path / "fake_fid.json")):
        res = run_script("fid.py", [f"samples={samples}", f"ref={stats_path}", *common], cwd=tmp_path, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["n"] == 6 and result["n_reference"] == 12 and math.isfinite(result["fid"])
        assert "kid" in result and "kid_std" in result
        assert f"fid {result['fid']:.4f}" in res.stdout
        scores[samples.name] = result["fid"]
    assert scores["pngs"] < scores["fake.npz"]  # real images are closer to their own statistics than negatives


def test_fid_cli_bad_input_is_one_line(fid_env):
    tmp_path, stats_path, common = fid_env
    for args, expected in ((["samples=/nonexistent"], "is neither a folder"),
                           ([f"samples={tmp_path / 'real.npz'}"], "no reference"),
                           ([f"samples={tmp_path / 'real.npz'}", "ref=nope"], "neither a file nor a data config"),
                           (["mode=bogus"], "mode must be one of")):
        res = run_script("fid.py", args + common, cwd=tmp_path, timeout=120)
        assert res.returncode == 2 and expected in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
