"""Every file a user hands scorelab is validated: a bad one ends in ONE clear ``UserError`` line naming the file,
never a traceback, a crash (LAPACK on a NaN matrix segfaults) or a silent wrong number.

Covered: feature statistics files and ``frechet_distance``; sample files (``.npz`` and image folders); checkpoint
weights, the checkpoint's layout and its stored ``module:`` settings; ``fid.py`` end to end on a poisoned file.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from scorelab.cli.common import build_core, check_module_keys, check_state_dict, load_checkpoint
from scorelab.core.errors import UserError
from scorelab.data.sample_files import ImageSet, write_png_images
from scorelab.lit.module import ScoreModule
from scorelab.metrics import FeatureStats, SampleEvaluator, StatsMismatchError, frechet_distance
from scorelab.metrics.frechet import InvalidStatsError
from scorelab.metrics.reference import reference_stats, stats_file

from .evaluation_utils import ProjectionFeatures
from .platform_utils import make_cfg, run_script

pytestmark = pytest.mark.usefixtures("one_thread")

F = 4
REBUILD = "python fid.py mode=ref data=<name> (or rebuild=true)"


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


# --- feature statistics files --------------------------------------------------------------------------------
def _stats_arrays(**changes) -> dict:
    f = np.random.default_rng(0).standard_normal((30, F))
    arrays = {"format": np.array("scorelab-feature-stats-v1"), "mu": f.mean(0), "sigma": np.cov(f, rowvar=False),
              "count": np.array(30), "extractor_id": np.array("proj"), "preprocessing": np.array("p"),
              "dataset": np.array("d"), "split": np.array("train"), "features": f.astype(np.float32)}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def _poisoned(name: str) -> dict:
    good = _stats_arrays()
    mu, sigma = good["mu"], good["sigma"]
    asym = sigma.copy()
    asym[0, 1] += 0.5
    return {
        "nan mu": dict(mu=np.where(np.arange(F) == 1, np.nan, mu)),
        "nan sigma": dict(sigma=np.where(np.eye(F, dtype=bool), np.nan, sigma)),
        "inf sigma": dict(sigma=np.full((F, F), np.inf)),
        "negative sigma": dict(sigma=-np.eye(F)),
        "asymmetric sigma": dict(sigma=asym),
        "sigma of F+1": dict(sigma=np.eye(F + 1)),
        "2-D mu": dict(mu=mu[None, :]),
        "count 0": dict(count=np.array(0)),
        "count 2.5": dict(count=np.array(2.5)),
        "features of F+1 columns": dict(features=np.zeros((5, F + 1), np.float32)),
        "nan features": dict(features=np.full((5, F), np.nan, np.float32)),
    }[name]


POISON = {
    "nan mu": r"holds non-finite values \(nan/inf\) in mu",
    "nan sigma": r"holds non-finite values \(nan/inf\) in sigma",
    "inf sigma": r"holds non-finite values \(nan/inf\) in sigma",
    "negative sigma": r"covariance sigma that is not positive semi-definite \(smallest eigenvalue -1\)",
    "asymmetric sigma": r"covariance sigma that is not symmetric \(max \|S - S\^T\| = 0.5\)",
    "sigma of F+1": r"covariance sigma of shape \[5, 5\], which does not match its mean mu of shape \[4\]",
    "2-D mu": r"mean mu of shape \[1, 4\]; expected a vector",
    "count 0": r"image count of 0; statistics need an integer count of at least 2",
    "count 2.5": r"image count of 2.5",
    "features of F+1 columns": r"raw features of float32 \[5, 5\]; expected numbers \[M, 4\]",
    "nan features": r"holds non-finite values \(nan/inf\) in features",
}


@pytest.mark.parametrize("name", list(POISON))
def test_poisoned_statistics_file_is_refused_on_load(tmp_path, name):
    path = tmp_path / "ref.npz"
    np.savez(path, **_stats_arrays(**_poisoned(name)))
    with pytest.raises(UserError, match=POISON[name]) as exc:
        FeatureStats.load(path)
    message = one_line(exc)
    assert message.startswith(f"statistics file {path} ") and message.endswith(REBUILD)


def test_statistics_are_validated_on_construction_too():
    with pytest.raises(InvalidStatsError, match=r"^feature statistics holds non-finite values \(nan/inf\) in sigma"):
        FeatureStats(np.zeros(F), np.full((F, F), np.nan), 10, "e", "p")
    with pytest.raises(InvalidStatsError, match="image count of 1"):
        FeatureStats(np.zeros(F), np.eye(F), 1, "e", "p")  # an unbiased covariance needs 2 images


def test_valid_statistics_load_including_a_rank_deficient_covariance(tmp_path):
    # 5 images of 64 features: the covariance has rank 4, its other eigenvalues are round-off around 0
    f = torch.randn(5, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 10
    stats = FeatureStats.from_features(f, keep_features=3, extractor_id="e", preprocessing="p")
    assert np.linalg.eigvalsh(stats.sigma).min() < 1e-12  # really singular
    loaded = FeatureStats.load(stats.save(tmp_path / "s.npz"))
    assert loaded.count == 5 and loaded.sigma.dtype == np.float64
    assert np.array_equal(loaded.sigma, stats.sigma) and loaded.features.shape == (3, 64)


def test_truncated_statistics_file_is_one_line(tmp_path):
    path = FeatureStats.from_features(torch.randn(30, F, dtype=torch.float64), extractor_id="e",
                                      preprocessing="p").save(tmp_path / "s.npz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cannot be read .*it may be truncated") as exc:
        FeatureStats.load(path)
    assert str(path) in one_line(exc) and one_line(exc).endswith(REBUILD)


def test_feature_dimension_must_match_the_extractor(tmp_path):
    ex = ProjectionFeatures(3 * 8 * 8, num_features=8)
    stats = FeatureStats.from_features(torch.randn(30, F, dtype=torch.float64), extractor_id=ex.extractor_id,
                                       preprocessing=ex.preprocessing)
    path = stats.save(tmp_path / "ref.npz")
    loaded = FeatureStats.load(path)
    expected = rf"hold features of dimension {F}, but the feature extractor '{ex.extractor_id}' gives 8"
    with pytest.raises(StatsMismatchError, match=expected) as exc:
        loaded.check(ex.extractor_id, ex.preprocessing, num_features=8)
    assert str(path) in one_line(exc)
    loaded.check(ex.extractor_id, ex.preprocessing, num_features=F)  # the matching dimension passes
    with pytest.raises(StatsMismatchError, match=expected):  # what fid.py, sample.py and the FID callback build
        SampleEvaluator(ex, loaded)


class _Images:
    from scorelab.domains import Images

    dataset_name = "tiny"
    domain = Images("tiny", (-1.0, 1.0))

    def images(self, split):
        return torch.zeros(4, 3, 8, 8, dtype=torch.uint8), None


def test_cached_reference_of_another_dimension_is_refused(tmp_path):
    ex = ProjectionFeatures(3 * 8 * 8, num_features=8)
    FeatureStats.from_features(torch.randn(30, F, dtype=torch.float64), extractor_id=ex.extractor_id,
                               preprocessing=ex.preprocessing).save(stats_file("tiny", "train", ex.extractor_id,
                                                                               cache=tmp_path))
    with pytest.raises(StatsMismatchError, match="dimension 4, but the feature extractor"):
        reference_stats(_Images(), "train", ex, cache=tmp_path, log=lambda _: None)


# --- frechet_distance ----------------------------------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(exact, rel=1e-10)
    assert 0.0 <= frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) < 1e-12  # never below 0 by round-off


@pytest.mark.parametrize("where", ["mu1", "sigma1", "mu2", "sigma2"])
def test_frechet_distance_refuses_non_finite_input(where):
    args = {"mu1": np.zeros(3), "sigma1": np.eye(3), "mu2": np.ones(3), "sigma2": np.eye(3)}
    args[where] = np.full_like(args[where], np.nan)
    with pytest.raises(InvalidStatsError, match=rf"non-finite values \(nan/inf\) in {where}") as exc:
        frechet_distance(**args)
    assert isinstance(exc.value, ValueError)  # what it raised for bad shapes before
    one_line(exc)


def test_frechet_distance_refuses_what_is_not_a_covariance_and_mismatched_shapes():
    with pytest.raises(InvalidStatsError, match="sigma1 that is not positive semi-definite"):
        frechet_distance(np.zeros(3), -np.eye(3), np.zeros(3), 0.1 * np.eye(3))  # would be -2.7 if computed
    with pytest.raises(InvalidStatsError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_frechet_distance_never_returns_a_negative_or_non_finite_value(monkeypatch):
    real_eigvals = torch.linalg.eigvals
    for bogus in (100.0, float("nan")):  # an eigenvalue solver gone wrong
        monkeypatch.setattr(torch.linalg, "eigvals", lambda m, v=bogus: real_eigvals(m) + v)
        with pytest.raises(InvalidStatsError, match="frechet_distance came out as"):
            frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3))


# --- fid.py end to end ---------------------------------------------------------------------------------------
def test_fid_cli_refuses_a_nan_covariance_in_one_line(tmp_path, monkeypatch):
    from scorelab.metrics.mnist_classifier import MNISTClassifier, MNISTFeatures, save_mnist_classifier

    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = MNISTClassifier(channels=(4, 8, 8), num_features=8)
    clf = save_mnist_classifier(net, tmp_path / "clf.pt", test_accuracy=0.0)
    ex = MNISTFeatures(net)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "samples.npz", x=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
    sigma = np.eye(8)
    sigma[3, 3] = np.nan  # with a matching extractor id, this would reach eigvals (MKL: DGEBAL, then SIGSEGV)
    np.savez(tmp_path / "ref.npz", **_stats_arrays(mu=np.zeros(8), sigma=sigma, features=None,
                                                  extractor_id=np.array(ex.extractor_id),
                                                  preprocessing=np.array(ex.preprocessing)))
    res = run_script("fid.py", [f"samples={tmp_path / 'samples.npz'}", f"ref={tmp_path / 'ref.npz'}", "features=mnist",
                                f"feature_extractor_weights_path={clf}", "progress=false"], cwd=tmp_path,
                     timeout=300)
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"statistics file {tmp_path / 'ref.npz'} holds non-finite values (nan/inf) in sigma" in lines[0]
    assert not (tmp_path / "samples_fd_mnist.json").exists()


# --- sample files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, expected", [
    ((0, 8, 8, 3), "holds no images"),
    ((2, 0, 0, 3), "holds 0x0 images"),
    ((2, 8, 0), "holds 8x0 images"),
    ((2, 8, 8, 5), "holds images of 5 channels"),
    ((2, 8, 8, 4), "holds images of 4 channels"),
])
def test_npz_samples_of_impossible_shapes_are_refused(tmp_path, shape, expected):
    path = tmp_path / "samples.npz"
    np.savez(path, x=np.zeros(shape, np.uint8))
    with pytest.raises(UserError, match=expected) as exc:
        ImageSet(path)
    assert str(path) in one_line(exc) and str(list(shape)) in one_line(exc)


def test_npz_samples_of_possible_shapes_are_read(tmp_path):
    np.savez(tmp_path / "grey.npz", x=np.full((3, 5, 7), 9, np.uint8))  # [N, H, W]: one channel
    np.savez(tmp_path / "rgb.npz", arr_0=np.full((2, 5, 7, 3), 9, np.uint8))
    grey, rgb = ImageSet(tmp_path / "grey.npz"), ImageSet(tmp_path / "rgb.npz")
    assert (len(grey), grey.image_shape, len(rgb), rgb.image_shape) == (3, (1, 5, 7), 2, (3, 5, 7))


def _valid_npz_bytes(tmp_path) -> bytes:
    np.savez(tmp_path / "valid.npz", x=np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    return (tmp_path / "valid.npz").read_bytes()


@pytest.mark.parametrize("damage", ["first half", "junk after the zip signature", "no signature"])
def test_truncated_or_corrupt_npz_samples_are_one_line(tmp_path, damage):
    data = _valid_npz_bytes(tmp_path)
    path = tmp_path / "samples.npz"
    path.write_bytes({"first half": data[: len(data) // 2],
                      "junk after the zip signature": data[:4] + np.random.default_rng(1).bytes(3000),
                      "no signature": b"\x93NUMPY junk"}[damage])
    with pytest.raises(UserError, match="cannot be read") as exc:
        ImageSet(path)
    assert str(path) in one_line(exc)


def _png_bytes(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (grey, 8 bit) and whose pixel data is empty: cheap to write,
    and only a reader that trusts the header before decoding would notice nothing wrong."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.fixture
def png_folder(tmp_path):
    folder = tmp_path / "pngs"
    write_png_images(torch.full((2, 3, 8, 8), 7, dtype=torch.uint8), folder, 0)
    (folder / "not_an_image.png").mkdir()  # a folder with an image's name is not an image
    return folder


def test_valid_png_folder_is_read(png_folder):
    images = ImageSet(png_folder)
    assert len(images) == 2 and images.read(0, 2).shape == (2, 3, 8, 8) and int(images.read(0, 2).max()) == 7


@pytest.mark.parametrize("bad, expected", [
    ("random bytes", r"cannot be read \(UnidentifiedImageError"),
    ("truncated", r"cannot be read \(OSError: .*truncated"),
    ("zero size", "cannot be read"),
    ("bomb 30000x30000", "refused as a decompression bomb"),
    ("9000x9000", r"claims a size of 9000x9000 pixels, over the limit .*refused without decoding"),
    ("20000x1", r"claims a size of 20000x1 pixels"),
])
def test_bad_image_files_are_one_line_naming_the_file(png_folder, bad, expected):
    path = png_folder / "000001.png"
    content = {"random bytes": np.random.default_rng(0).bytes(500),
               "truncated": path.read_bytes()[:-30],
               "zero size": _png_bytes(0, 5),
               "bomb 30000x30000": _png_bytes(30000, 30000),
               "9000x9000": _png_bytes(9000, 9000),
               "20000x1": _png_bytes(20000, 1)}[bad]
    path.write_bytes(content)
    images = ImageSet(png_folder)
    assert images.read(0, 1).shape == (1, 3, 8, 8)  # the good file still reads
    with pytest.raises(UserError, match=expected) as exc:
        images.read(0, 2)
    assert f"image {path} " in one_line(exc)


# --- checkpoint weights --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = make_cfg(tmp_path_factory.mktemp("cfg"), ["model.net.width=8", "model.net.depth=1"])
    parts = build_core(cfg)
    module_cfg = {k: v for k, v in OmegaConf.to_container(cfg.module, resolve=True).items() if k != "_target_"}
    return ScoreModule(parts["score_model"], parts["sde"], **module_cfg), module_cfg


WEIGHT = "score_model.net.inp.weight"


def _weights(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_own_weights_pass_and_load(tiny):
    module, _ = tiny
    sd = _weights(module)
    assert sd["ema.n_averaged"].dtype == torch.int64  # an integer buffer, compared with the model's own
    check_state_dict(module, sd, "own.ckpt")
    module.load_state_dict(sd)


@pytest.mark.parametrize("case, expected", [
    ("nan", rf"holds non-finite values \(nan/inf\) in {WEIGHT}; .*use an earlier checkpoint"),
    ("inf in the EMA copy", r"holds non-finite values \(nan/inf\) in ema.module.net.inp.weight"),
    ("int64", rf"{WEIGHT} is torch.int64 there but torch.float32 here"),
    ("bool", rf"{WEIGHT} is torch.bool there but torch.float32 here"),
    ("float counter", r"ema.n_averaged is torch.float32 there but torch.int64 here"),
    ("extra key", r"extra.weight is in it but not in the model"),
    ("non-tensor", rf"{WEIGHT} holds a list, not a tensor"),
    ("missing", rf"{WEIGHT} is missing from it"),
    ("shape", rf"{WEIGHT} has shape \(8, 3\) there but \(8, 2\) here"),
])
def test_bad_weights_are_one_line_naming_the_key(tiny, case, expected):
    module, _ = tiny
    sd = _weights(module)
    w = sd[WEIGHT]
    if case == "nan":
        sd[WEIGHT] = w.clone().index_fill_(1, torch.tensor([0]), float("nan"))
    elif case == "inf in the EMA copy":
        sd["ema.module.net.inp.weight"] = torch.full_like(w, float("inf"))
    elif case == "int64":
        sd[WEIGHT] = torch.ones_like(w, dtype=torch.int64)
    elif case == "bool":
        sd[WEIGHT] = torch.ones_like(w, dtype=torch.bool)
    elif case == "float counter":
        sd["ema.n_averaged"] = sd["ema.n_averaged"].float()
    elif case == "extra key":
        sd["extra.weight"] = torch.zeros(2)
    elif case == "non-tensor":
        sd[WEIGHT] = w.tolist()
    elif case == "missing":
        del sd[WEIGHT]
    elif case == "shape":
        sd[WEIGHT] = torch.zeros(8, 3)
    with pytest.raises(UserError, match=expected) as exc:
        check_state_dict(module, sd, "/runs/x.ckpt")
    assert one_line(exc).startswith("checkpoint /runs/x.ckpt ")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_weights_of_another_float_dtype_are_converted(tiny, dtype):
    module, _ = tiny
    sd = _weights(module)
    values = torch.arange(16, dtype=dtype).reshape(8, 2) / 4  # exact in every float dtype
    sd[WEIGHT] = values
    sd["ema.n_averaged"] = sd["ema.n_averaged"].int()  # integer buffers: converted between integer dtypes
    check_state_dict(module, sd, "x.ckpt")
    assert sd[WEIGHT].dtype == torch.float32 and sd["ema.n_averaged"].dtype == torch.int64
    module.load_state_dict(sd)
    assert torch.equal(module.score_model.net.inp.weight.detach(), values.float())


def test_a_float64_nan_is_refused_not_converted(tiny):
    module, _ = tiny
    sd = _weights(module)
    sd[WEIGHT] = torch.full((8, 2), float("nan"), dtype=torch.float64)
    with pytest.raises(UserError, match=rf"non-finite values \(nan/inf\) in {WEIGHT}"):
        check_state_dict(module, sd, "x.ckpt")


def test_checkpoint_layout_is_checked_on_load(tmp_path, tiny):
    module, module_cfg = tiny
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": module.state_dict(), "scorelab_config": {"module": module_cfg}}, good)
    path, ckpt = load_checkpoint(str(good))
    check_state_dict(module, ckpt["state_dict"], path)
    for name, obj, expected in (
            ("list_state.ckpt", {"state_dict": [1, 2]}, "its state_dict is a list, not a dict"),
            ("list_config.ckpt", {"state_dict": {}, "scorelab_config": ["model"]},
             "its stored scorelab_config is a list, not a dict"),
            ("none_config.ckpt", {"state_dict": {}, "scorelab_config": None}, "scorelab_config is a NoneType")):
        torch.save(obj, tmp_path / name)
        with pytest.raises(UserError, match=expected) as exc:
            load_checkpoint(str(tmp_path / name))
        assert str(tmp_path / name) in one_line(exc)
    (tmp_path / "truncated.ckpt").write_bytes(good.read_bytes()[:200])
    (tmp_path / "dangling.ckpt").symlink_to(tmp_path / "gone.ckpt")
    for name, expected in (("truncated.ckpt", "cannot be read"), ("dangling.ckpt", "a link to a file that does not"),
                           ("", "is a folder, not a file")):
        with pytest.raises(UserError, match=expected) as exc:
            load_checkpoint(str(tmp_path / name))
        one_line(exc)


def test_stored_module_keys_are_checked_against_the_class(tiny):
    _, module_cfg = tiny
    check_module_keys(module_cfg, ScoreModule, "x.ckpt")  # what train.py stores passes
    check_module_keys(OmegaConf.create({"_target_": "t", **module_cfg}), ScoreModule, "x.ckpt")  # Hydra's keys too
    with pytest.raises(UserError, match=r"'bogus' in module:\); ScoreModule accepts .*ema_decay") as exc:
        check_module_keys({**module_cfg, "bogus": 1}, ScoreModule, "/runs/x.ckpt")
    assert "score_model," not in one_line(exc) and "/runs/x.ckpt" in one_line(exc)
    with pytest.raises(UserError, match=r"'sde' in module:"):  # given by the caller: would be given twice
        check_module_keys({"sde": 1}, ScoreModule, "x.ckpt")
    with pytest.raises(UserError, match="stored module settings are a list"):
        check_module_keys([1], ScoreModule, "x.ckpt")
