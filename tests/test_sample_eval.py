"""sample.py as an evaluation tool: per-sample seeds, honest NFE, shards written as made, FID in one go, and the
FID callback under DDP."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from scorelab.cli import sample
from scorelab.data.sample_files import ImageSet
from scorelab.metrics.inception import InceptionFeatures
from scorelab.metrics.reference import compute_stats
from scorelab.sampling import EulerMaruyama, PCSampler
from scorelab.sampling.seeded import NonFiniteSamplesError, seeded_batches
from scorelab.sde import VPSDE

from .evaluation_utils import TINY_IMAGE_RUN, write_random_inception_weights
from .platform_utils import make_cfg, run_script


@pytest.fixture(scope="module")
def image_run(tiny_image_run):
    """The suite's tiny image checkpoint (``tests/conftest.py``): a model trained for two steps on random 16x16
    images."""
    return tiny_image_run.root, tiny_image_run.data, tiny_image_run.ckpt


def _sample_cfg(tmp_path, name: str, overrides: list[str]):
    cfg = make_cfg(tmp_path, overrides + ["progress=false"], config_name="sample")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
    return cfg


def test_same_seed_range_gives_identical_images_at_batch_sizes_7_and_64(tmp_path, image_run):
    _, _, ckpt = image_run
    shards = {}
    for batch_size in (7, 64):
        cfg = _sample_cfg(tmp_path, f"b{batch_size}", [f"ckpt_path={ckpt}", "n_samples=20", f"batch_size={batch_size}",
                                                       "sampler=euler_maruyama", "sampler.steps=4", "seed=100"])
        folder = sample(cfg)
        images = ImageSet(folder)
        assert len(images) == 20
        shards[batch_size] = images.read(0, 20)
        summary = json.loads((folder.parent / "sample.json").read_text())
        batches = math.ceil(20 / batch_size)
        assert summary["runs"][0]["nfe"] == 4 and summary["runs"][0]["nfe_total"] == 4 * batches
        assert summary["runs"][0]["seeds"] == [100, 119]
    assert len(list((tmp_path / "b7" / "samples").glob("shard_*.npz"))) == 3  # one shard per batch, as made
    assert torch.equal(shards[7], shards[64])
    # and a shifted range starts with the images of the later seeds
    cfg = _sample_cfg(tmp_path, "shifted", [f"ckpt_path={ckpt}", "n_samples=5", "batch_size=5",
                                            "sampler=euler_maruyama", "sampler.steps=4", "seed=115", "format=png"])
    assert torch.equal(ImageSet(sample(cfg)).read(0, 5), shards[7][15:20])


def test_toy_samples_are_batch_size_invariant_and_count_every_batch(tmp_path):
    xs = {}
    for batch_size in (7, 64):
        cfg = _sample_cfg(tmp_path, f"toy{batch_size}", ["model=oracle", "sampler=euler_maruyama", "sampler.steps=5",
                                                         "n_samples=20", f"batch_size={batch_size}"])
        data = np.load(sample(cfg))
        xs[batch_size] = data["x"]
        assert int(data["nfe"]) == 5 and int(data["nfe_total"]) == 5 * math.ceil(20 / batch_size)
        assert data["seeds"].tolist() == list(range(20))
        metrics = json.loads((tmp_path / f"toy{batch_size}" / "metrics.json").read_text())
        assert metrics["nfe"] == 5 and metrics["batches"] == math.ceil(20 / batch_size)
    np.testing.assert_allclose(xs[7], xs[64], atol=1e-5)


def test_non_finite_samples_name_the_sampler_and_step():
    sde = VPSDE()

    def score(x, t):  # finite early in the reverse process, NaN from t < 0.5 on
        return torch.where((t < 0.5)[:, None], torch.full_like(x, float("nan")), -x)

    sampler = PCSampler(EulerMaruyama(), steps=10)
    with pytest.raises(NonFiniteSamplesError, match=r"EulerMaruyama.*NaN/Inf at step \d.*seeds 0\.\.3"):
        next(seeded_batches(sampler, score, sde, (2,), range(8), batch_size=4))


def test_sample_and_fid_in_one_go_with_the_edm_protocol(tmp_path, image_run, monkeypatch):
    _, data, ckpt = image_run
    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "cache"))
    weights = write_random_inception_weights(tmp_path / "inception.pth")
    extractor = InceptionFeatures(weights_path=weights)
    real = torch.from_numpy(np.load(data)["x"][:8]).permute(0, 3, 1, 2)
    stats = compute_stats(extractor, real, keep_features=8).save(tmp_path / "ref.npz")
    cfg = _sample_cfg(tmp_path, "edm", [f"ckpt_path={ckpt}", "n_samples=3", "batch_size=3", "sampler=euler_maruyama",
                                        "sampler.steps=2", "eval.fid=true", "eval.protocol=edm", f"eval.ref={stats}",
                                        "eval.features=inception", "eval.kid_subsets=3",
                                        f"feature_extractor_weights_path={weights}"])
    sample(cfg)
    out = tmp_path / "edm"
    summary = json.loads((out / "sample.json").read_text())
    assert [r["seeds"] for r in summary["runs"]] == [[0, 2], [3, 5], [6, 8]]
    assert len(summary["fid_each"]) == 3 and summary["fid"] == min(summary["fid_each"])
    assert all(r["n"] == 3 and "kid" in r for r in summary["runs"])
    assert len([p for p in out.glob("samples_seeds_*") if p.is_dir()]) == 3


def test_fid_and_likelihood_callbacks_two_process_ddp_equal_one_process(tmp_path, image_run):
    """Each rank samples its share of one seed range; torchmetrics gathers the features. With lr = 0 both runs
    hold the same (initial) weights, so they score the same images and must report the same FID (and bits/dim)."""
    _, data, _ = image_run
    weights = write_random_inception_weights(tmp_path / "inception.pth")
    common = [o for o in TINY_IMAGE_RUN if not o.startswith("data.batch_size")] + [
        f"data.path={data}", "optimizer.lr=0", "callbacks/fid=default", "callbacks.fid.n_samples=6",
        "callbacks.fid.batch_size=2", "callbacks.fid.ref_count=8", "callbacks.fid.every_n_epochs=0",
        f"callbacks.fid.cache_dir={tmp_path / 'cache'}", f"feature_extractor_weights_path={weights}",
        "callbacks/likelihood=default", "callbacks.likelihood.n=4", "callbacks.likelihood.every_n_epochs=0",
        "callbacks.likelihood.rtol=1e-3", "callbacks.likelihood.atol=1e-3"]
    values = {}
    for name, extra in (("one", ["data.batch_size=8"]),
                        ("two", ["data.batch_size=4", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])):
        res = run_script("train.py", common + extra + [f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        metrics = json.loads((tmp_path / name / "final_metrics.json").read_text())
        values[name] = metrics["fid@6"]
        values[name + "_bpd"] = metrics["bpd@4"]
        assert list((tmp_path / name / "samples").glob("fid_step_*.png"))
    assert math.isfinite(values["one"]) and values["two"] == pytest.approx(values["one"], rel=1e-6)
    # bits/dim: per-rank solves with per-example seeds, gathered once, equal the single process's
    assert 0 < values["one_bpd"] < 100 and values["two_bpd"] == pytest.approx(values["one_bpd"], rel=1e-5)
