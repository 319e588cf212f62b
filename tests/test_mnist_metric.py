"""Tests of the offline MNIST domain metric (scorelab.metrics.mnist_classifier): fd_mnist and class histograms."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scorelab.cli.mnist_features import main
from scorelab.core.errors import UserError
from scorelab.data.images import DatasetNotFoundError
from scorelab.data.sources import load_mnist
from scorelab.metrics.frechet import FeatureStats
from scorelab.metrics.mnist_classifier import (
    MNISTClassifier,
    MNISTFeatures,
    accuracy,
    class_deviation,
    class_fractions,
    class_histogram,
    fit_mnist_classifier,
    load_mnist_features,
    save_mnist_classifier,
    train_mnist_classifier,
)

from .platform_utils import python_command

SHARED = Path(os.environ.get("SCORELAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MNIST_RAW = SHARED / "MNIST" / "raw"
SRC = Path(__file__).resolve().parents[1] / "src"
TRAIN_IMAGES, EPOCHS, MIN_ACCURACY = 6000, 2, 0.95  # 6000 images x 2 epochs gave 0.97-0.98 on the 10000 test images


def untrained(seed: int = 0) -> MNISTFeatures:
    """An extractor around a randomly initialised classifier (seeded)."""
    torch.manual_seed(seed)
    return MNISTFeatures(MNISTClassifier())


def digits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """A data folder holding a copy of the shared MNIST .gz files."""
    if len(list(MNIST_RAW.glob("*-ubyte.gz"))) != 4:
        pytest.skip(f"MNIST .gz files not found in {MNIST_RAW} (set SCORELAB_SHARED_DATA to their data folder)")
    raw = tmp_path_factory.mktemp("data") / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in MNIST_RAW.glob("*-ubyte.gz"):
        shutil.copy(gz, raw / gz.name)
    return raw.parents[1]


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory) -> dict:
    """The classifier trained on the first 6000 training images for 2 epochs, saved and loaded back."""
    path, acc = train_mnist_classifier(mnist_dir, tmp_path_factory.mktemp("cache") / "clf.pt", epochs=EPOCHS,
                                       max_train_images=TRAIN_IMAGES, log=None)
    test_x, test_y = load_mnist(mnist_dir, "test")
    return {"path": path, "accuracy": acc, "extractor": load_mnist_features(path),
            "train_x": load_mnist(mnist_dir, "train")[0][:TRAIN_IMAGES], "test_x": test_x, "test_y": test_y}


# --- the extractor contract ---------------------------------------------------------------------------------
def test_extractor_contract_dtype_shape_and_wrong_inputs():
    ex = untrained()
    x = digits(7)
    features, logits = ex(x), ex.logits(x)
    assert features.dtype == logits.dtype == torch.float32
    assert features.shape == (7, ex.num_features) and ex.num_features == 128 and logits.shape == (7, 10)
    assert ex.metric_name == "fd_mnist" and "255" in ex.preprocessing
    ex.batch_size = 3  # chunked passes give the same numbers as one pass
    torch.testing.assert_close(ex(x), features)
    for bad in (x.float() / 255, x.expand(-1, 3, -1, -1), F.pad(x, (2, 2, 2, 2)), x[:, 0]):
        with pytest.raises(ValueError, match=re.escape("[B, 1, 28, 28]")):
            ex(bad)
        with pytest.raises(ValueError, match=re.escape("[B, 1, 28, 28]")):
            ex.logits(bad)


def test_extractor_stays_in_eval_mode_without_gradients():
    ex = untrained()
    ex.train()
    assert not ex.training and not ex.net.training
    assert not any(p.requires_grad for p in ex.parameters())
    before = {k: v.clone() for k, v in ex.state_dict().items()}
    with torch.enable_grad():
        out = ex(digits(16))
    assert not out.requires_grad
    for k, v in ex.state_dict().items():  # batch-norm running statistics untouched
        assert torch.equal(v, before[k]), k


def test_extractor_id_names_the_weights():
    a, b = untrained(0), untrained(1)
    assert re.fullmatch(r"mnist-cnn-v1:[0-9a-f]{12}", a.extractor_id)
    assert a.extractor_id != b.extractor_id
    assert untrained(0).extractor_id == a.extractor_id
    old = a.extractor_id
    a.net.body[1].running_mean[0] += 1e-3  # a buffer counts too: it changes the features
    assert a.extractor_id != old


# --- files --------------------------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact_and_weights_only(tmp_path):
    ex = untrained()
    path = save_mnist_classifier(ex.net, tmp_path / "clf.pt", test_accuracy=0.5, epochs=1, seed=0)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "scorelab-mnist-classifier-v1" and raw["test_accuracy"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.pt"]  # no temporary file left behind
    loaded = load_mnist_features(path)
    x = digits(9)
    assert torch.equal(loaded(x), ex(x)) and torch.equal(loaded.logits(x), ex.logits(x))
    assert loaded.extractor_id == ex.extractor_id and loaded.test_accuracy == 0.5 and not loaded.training


def test_missing_or_broken_file_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="make mnist-features") as err:
        load_mnist_features()
    assert str(tmp_path / "cache" / "mnist_classifier.pt") in str(err.value)
    with pytest.raises(UserError, match="make mnist-features"):
        load_mnist_features(tmp_path / "nowhere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot be read"):
        load_mnist_features(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a scorelab MNIST classifier"):
        load_mnist_features(tmp_path / "other.pt")


def test_command_keeps_a_cached_file_unless_forced(tmp_path, capsys):
    path = save_mnist_classifier(untrained().net, tmp_path / "clf.pt", test_accuracy=0.25)
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [*python_command(), "-m", "scorelab.cli.mnist_features", "--out", str(path), "--data-dir", "none"]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "exists" in out.stdout and "0.2500" in out.stdout and path.read_bytes() == before
    with pytest.raises(DatasetNotFoundError, match="MNIST files missing"):  # --force retrains: here, no data
        main(["--out", str(path), "--force", "--data-dir", str(tmp_path / "no-data")])
    assert path.read_bytes() == before
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "fd_mnist" in capsys.readouterr().out


# --- training and the metric on real digits -----------------------------------------------------------------
def test_training_is_seeded_and_leaves_the_global_rng_alone():
    x, y = digits(96), torch.arange(96) % 10
    state = torch.get_rng_state()
    ids = [MNISTFeatures(fit_mnist_classifier(x, y, epochs=1, batch_size=32, seed=s)).extractor_id for s in (0, 0, 1)]
    assert ids[0] == ids[1] != ids[2]
    assert torch.equal(torch.get_rng_state(), state)


def test_short_training_reaches_accuracy_on_held_out_digits(trained):
    """6000 training images, 2 epochs: at least 95% of the 10000 test images (never seen) classified right."""
    assert trained["accuracy"] >= MIN_ACCURACY
    assert trained["extractor"].test_accuracy == pytest.approx(trained["accuracy"])
    assert accuracy(trained["extractor"], trained["test_x"][:1000], trained["test_y"][:1000]) >= MIN_ACCURACY


def test_fd_mnist_ranks_real_far_below_blurred_and_noise(trained):
    ex, test_x = trained["extractor"], trained["test_x"][:2000]
    meta = {"extractor_id": ex.extractor_id, "preprocessing": ex.preprocessing}
    reference = FeatureStats.from_features(ex(trained["train_x"]), **meta)
    blurred = F.avg_pool2d(test_x.float(), 3, stride=1, padding=1).round().to(torch.uint8)
    noise = digits(2000, seed=1)
    fd = {name: reference.distance(FeatureStats.from_features(ex(x), **meta))
          for name, x in (("real", test_x), ("blurred", blurred), ("noise", noise))}
    assert fd["real"] * 20 < fd["blurred"], fd  # measured: real 5.9, blurred 368, noise 2181
    assert fd["blurred"] * 2 < fd["noise"], fd


# --- class histograms ---------------------------------------------------------------------------------------
def test_class_histogram_of_labels_and_logits():
    labels = torch.tensor([3, 3, 7, 3, 7])
    assert class_histogram(labels).tolist() == [0, 0, 0, 3, 0, 0, 0, 2, 0, 0]
    logits = F.one_hot(labels, 10).float() * 5 + torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(class_histogram(logits), class_histogram(labels))
    assert class_fractions(class_histogram(labels))[3] == pytest.approx(0.6)
    assert class_deviation(torch.full((10,), 7)) == 0 and class_deviation(class_histogram(labels)) == pytest.approx(0.5)
    assert class_deviation(class_histogram(labels), reference=class_histogram(labels)) == 0
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([1, 10]), torch.tensor([-1, 2]), torch.zeros(2, 3, 4)):
        with pytest.raises(ValueError):
            class_histogram(bad)


def test_class_histogram_shows_a_model_that_draws_two_digits(trained):
    ex, x, y = trained["extractor"], trained["test_x"], trained["test_y"]
    two = x[(y == 3) | (y == 7)][:1000]
    counts = class_histogram(ex.logits(two))
    assert counts.sum() == two.shape[0]
    assert counts[[3, 7]].sum() >= 0.97 * two.shape[0], counts  # the rest: the classifier's own mistakes
    assert class_deviation(counts) > 0.35 and class_deviation(class_histogram(ex.logits(x[:1000]))) < 0.05


def test_features_config_trains_the_classifier_once_when_missing(tmp_path, monkeypatch):
    """features=mnist (scorelab.metrics.mnist_classifier.mnist_features) trains into the cache only when needed."""
    import scorelab.metrics.mnist_classifier as mc

    calls = []

    def fake_train(data_dir, out, **kwargs):
        calls.append((Path(data_dir), Path(out)))
        torch.manual_seed(0)
        return save_mnist_classifier(MNISTClassifier(), out, test_accuracy=0.5), 0.5

    monkeypatch.setattr(mc, "train_mnist_classifier", fake_train)
    target = tmp_path / "cache" / "clf.pt"
    first = mc.mnist_features(target, data_dir=tmp_path / "data")
    second = mc.mnist_features(target, data_dir=tmp_path / "data")
    assert calls == [(tmp_path / "data", target)] and first.extractor_id == second.extractor_id
    with pytest.raises(UserError, match="make mnist-features"):
        mc.mnist_features(tmp_path / "other.pt", data_dir=tmp_path / "data", train_if_missing=False)


def test_fid_cli_reports_fd_mnist_and_the_class_histogram(trained, mnist_dir, tmp_path):
    """fid.py features=mnist: reference statistics of MNIST, then test digits scored as fd_mnist (never 'fid')."""
    import json

    import numpy as np

    from .platform_utils import run_script

    env_args = [f"feature_extractor_weights_path={trained['path']}", f"paths.data_dir={mnist_dir}", "features=mnist",
                f"cache_dir={tmp_path / 'cache'}", "progress=false",
                "ref_count=5000", "kid_subsets=5", "kid_subset_size=200"]
    res = run_script("fid.py", ["mode=ref", "data=mnist", *env_args], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    np.savez(tmp_path / "digits.npz", x=trained["test_x"][:500, 0].numpy())  # uint8 [N, 28, 28]
    res = run_script("fid.py", [f"samples={tmp_path / 'digits.npz'}", "ref=mnist", *env_args], cwd=tmp_path,
                     timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "digits_fd_mnist.json").read_text())
    assert "fid" not in result and result["n"] == 500 and result["n_reference"] == 5000
    assert 0 <= result["fd_mnist"] < 20 and "kd_mnist" in result
    assert sum(result["class_histogram"]) == 500 and min(result["class_histogram"]) > 20  # every digit drawn
    assert "fd_mnist" in res.stdout
