"""Classifier guidance (Song et al. 2021, App. I.1): the exact noisy classifier of a Gaussian mixture, Bayes' rule
for the guided score, per-example gradients under every grad mode, training the noisy classifier with train.py,
loading it safely, and sample.py's task=labels task.classifier=... with one clear message for every mistake."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scorelab.cli.classifier import check_compatible, load_classifier
from scorelab.cli.errors import UnsafeFileError, UserError
from scorelab.cli.sample import sample
from scorelab.cli.train import train
from scorelab.data.toy import GaussianMixture, eight_gaussians
from scorelab.guidance.classifier import ClassifierGuidance, OracleClassifier, classifier_log_prob_grad
from scorelab.models.noisy_classifier import ClassifierCNN, ClassifierMLP, NoisyClassifier
from scorelab.sampling import EulerMaruyama, NoCorrector, PCSampler
from scorelab.sde import VESDE, VPSDE

from .platform_utils import make_cfg

TIMES = [0.02, 0.1, 0.3, 0.6, 1.0]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: a second thread only waits


def _mixture() -> GaussianMixture:
    """Three anisotropic components with unequal weights: no symmetry helps the formulas."""
    covs = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.5]], [[0.25, -0.05], [-0.05, 0.15]]],
                        dtype=torch.float64)
    return GaussianMixture([0.5, 0.3, 0.2], [[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], covs=covs)


def _component(mixture: GaussianMixture, k: int) -> GaussianMixture:
    return GaussianMixture([1.0], mixture.means[k:k + 1], covs=mixture.covs[k:k + 1])


# --- exact answers on a Gaussian mixture ------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "ve"])
def test_oracle_classifier_is_the_posterior_over_perturbed_components(sde, gen):
    mixture = _mixture()
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64) * 2
    for t_val in TIMES:
        t = torch.full((64,), t_val, dtype=torch.float64)
        a, s = sde.mean_coeff(t)[0], sde.marginal_std(t)[0]
        joint = torch.stack([
            math.log(w) + torch.distributions.MultivariateNormal(
                a * mixture.means[k], a**2 * mixture.covs[k] + s**2 * torch.eye(2, dtype=torch.float64)).log_prob(x)
            for k, w in enumerate(mixture.weights.tolist())], dim=1)
        posterior = torch.softmax(OracleClassifier(mixture, sde)(x, t), dim=1)
        torch.testing.assert_close(posterior, torch.softmax(joint, dim=1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "ve"])
def test_guided_exact_score_is_the_exact_conditional_score(sde, gen):
    """grad log p_t(x) + grad log p_t(y | x) = grad log p_t(x | y): the score of component y alone (Bayes)."""
    mixture = _mixture()
    x = torch.randn(128, 2, generator=gen, dtype=torch.float64) * 2
    for y in range(3):
        guided = ClassifierGuidance(mixture.oracle(sde), OracleClassifier(mixture, sde), y, scale=1.0)
        conditional = _component(mixture, y).oracle(sde)
        for t_val in TIMES:
            t = torch.full((128,), t_val, dtype=torch.float64)
            torch.testing.assert_close(guided(x, t), conditional(x, t), rtol=1e-9, atol=1e-9)


def test_scale_zero_is_the_unconditional_score_and_scale_w_extrapolates_linearly(gen):
    mixture, sde = _mixture(), VPSDE()
    x = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    t = torch.full((32,), 0.3, dtype=torch.float64)
    uncond, cond = mixture.oracle(sde)(x, t), _component(mixture, 1).oracle(sde)(x, t)
    classifier = OracleClassifier(mixture, sde)
    assert torch.equal(ClassifierGuidance(mixture.oracle(sde), classifier, 1, scale=0.0)(x, t), uncond)
    guided = ClassifierGuidance(mixture.oracle(sde), classifier, 1, scale=2.5)(x, t)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-9, atol=1e-9)


def test_guided_sampling_with_the_exact_scores_draws_the_asked_component():
    """Every sampler calls model(x, t) under no_grad: guidance still takes its gradient, and sample i of
    labels [0, 0, ..., 7, 7] lands in its component."""
    mixture, sde = eight_gaussians(), VPSDE()
    labels = torch.arange(8).repeat_interleave(25)
    guided = ClassifierGuidance(mixture.oracle(sde), OracleClassifier(mixture, sde), labels, scale=1.0)
    sampler = PCSampler(EulerMaruyama(), NoCorrector(), steps=200)
    x, _ = sampler(guided, sde, (len(labels), 2), generator=torch.Generator().manual_seed(0))
    assert (mixture.classify(x.double()) == labels).float().mean() >= 0.99


# --- per-example gradients ---------------------------------------------------------------------------------------
def _cnn_classifier() -> NoisyClassifier:
    torch.manual_seed(0)
    return NoisyClassifier(ClassifierCNN(num_classes=10, in_channels=1, image_size=12, ch=8, ch_mult=(1, 2)), VPSDE())


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_guidance_gradient_is_per_example_in_every_grad_mode(mode, gen):
    """The batch's gradient equals each example's own gradient (group norm, no batch norm: nothing mixes the
    examples), also in training mode and inside no_grad / inference_mode, as samplers call it."""
    classifier = _cnn_classifier().train()
    x = torch.randn(6, 1, 12, 12, generator=gen)
    t = torch.linspace(0.05, 0.95, 6)
    y = torch.tensor([0, 3, 9, 1, 1, 5])
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    with context():
        batch = classifier_log_prob_grad(classifier, x, t, y)
    assert not batch.requires_grad
    for i in range(6):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (own,) = torch.autograd.grad(torch.log_softmax(classifier(xi, t[i:i + 1]), 1)[0, y[i]], xi)
        torch.testing.assert_close(batch[i:i + 1], own, rtol=1e-5, atol=1e-7)
    assert batch.abs().sum() > 0


def _first_row_grad(classifier, x: torch.Tensor, others: float) -> torch.Tensor:
    """The guidance gradient of example 0 in a batch whose other examples are set to ``others``."""
    batch = torch.cat([x[:1], torch.full_like(x[1:], others)])
    return classifier_log_prob_grad(classifier, batch, torch.full((len(x),), 0.3), torch.zeros(len(x)))[0]


def test_an_example_gradient_does_not_depend_on_the_rest_of_the_batch(gen):
    """Batch independence; and the check is not hollow: a batch-norm classifier in training mode fails it."""
    images = torch.randn(4, 1, 12, 12, generator=gen)
    cnn = _cnn_classifier().train()
    torch.testing.assert_close(_first_row_grad(cnn, images, 0.0), _first_row_grad(cnn, images, 3.0))
    mixing = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)).train()
    points = torch.randn(4, 2, generator=gen)
    bn = lambda x, t: mixing(x)  # noqa: E731
    assert not torch.allclose(_first_row_grad(bn, points, 0.0), _first_row_grad(bn, points, 3.0))


def test_guidance_refuses_labels_it_cannot_use(gen):
    mixture, sde = _mixture(), VPSDE()
    x, t = torch.randn(6, 2, generator=gen, dtype=torch.float64), torch.full((6,), 0.2, dtype=torch.float64)
    guided = ClassifierGuidance(mixture.oracle(sde), OracleClassifier(mixture, sde), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="3 labels are given but the score was asked for 6"):
        guided(x, t)
    with pytest.raises(ValueError, match=r"labels must lie in 0..2"):
        ClassifierGuidance(mixture.oracle(sde), OracleClassifier(mixture, sde), 3)


def test_classifier_networks_give_logits_of_their_classes():
    mlp = NoisyClassifier(ClassifierMLP(num_classes=8, dim=2, width=16, depth=1, embed_dim=8), VPSDE())
    assert mlp(torch.zeros(4, 2), torch.rand(4)).shape == (4, 8) and mlp.num_classes == 8
    assert _cnn_classifier()(torch.zeros(3, 1, 12, 12), torch.rand(3)).shape == (3, 10)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        ClassifierMLP(num_classes=1)
    with pytest.raises(ValueError, match="square images"):
        ClassifierCNN.data_arguments((2,))


# --- training with train.py, loading, sample.py --------------------------------------------------------------
TOY = ["experiment=toy_eight_gaussians_classifier", "trainer.enable_progress_bar=false", "data.n_train=10240",
       "data.n_val=2048", "logger=none"]


@pytest.fixture(scope="module")
def toy_classifier(tmp_path_factory):
    """A toy noisy classifier trained by its experiment (300 steps = 15 epochs of 20, ~10 s on one core)."""
    tmp = tmp_path_factory.mktemp("toycls")
    cfg = make_cfg(tmp, TOY + ["trainer.max_steps=300", "trainer.check_val_every_n_epoch=15"])
    threads = torch.get_num_threads()  # set up before the function-scoped one_thread fixture: one thread here too
    torch.set_num_threads(1)
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return tmp / "run"


def test_trained_toy_classifier_is_accurate_at_small_t_and_at_chance_at_t1(toy_classifier):
    metrics = json.loads((toy_classifier / "final_metrics.json").read_text())
    assert metrics["val/acc_t0.01"] >= 0.97  # the components hardly overlap at t = 0.01 (exact: 1.0)
    assert abs(metrics["val/acc_t1"] - 1 / 8) < 0.05  # x_1 carries (almost) nothing of x_0: the prior's 1/8
    assert metrics["val/acc_t0.01"] > metrics["val/acc_t0.5"] > metrics["val/acc_t1"]


def test_training_the_classifier_is_deterministic(tmp_path):
    weights = []
    for run in ("a", "b"):
        cfg = make_cfg(tmp_path / run, TOY + ["trainer.max_steps=6", "trainer.check_val_every_n_epoch=100",
                                              "data.n_train=2048", "seed=3"])
        train(cfg)
        ckpt = torch.load(tmp_path / run / "run" / "checkpoints" / "last.ckpt", weights_only=True)
        weights.append(ckpt["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_classifier_checkpoint_loads_safely_and_refuses_foreign_targets(toy_classifier, tmp_path):
    path = toy_classifier / "checkpoints" / "last.ckpt"
    loaded = load_classifier(str(path))
    ckpt = torch.load(path, weights_only=True)
    own = {f"classifier.{k}": v for k, v in loaded.classifier.state_dict().items()}
    assert all(torch.equal(own[k], ckpt["state_dict"][k]) for k in own)
    assert loaded.classifier.num_classes == 8 and not loaded.classifier.training
    ckpt["scorelab_config"]["classifier_module"]["_target_"] = "os.system"
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeFileError, match="os.system"):
        load_classifier(str(tmp_path / "evil.ckpt"))
    del ckpt["scorelab_config"]["classifier_module"]
    torch.save(ckpt, tmp_path / "score.ckpt")
    with pytest.raises(UserError, match="is a score-model checkpoint, not a noisy classifier"):
        load_classifier(str(tmp_path / "score.ckpt"))


def _sample_cfg(tmp_path, overrides):
    return make_cfg(tmp_path, ["model=oracle", "data=toy_eight_gaussians", "progress=false", "sampler=euler_maruyama",
                               "sampler.steps=100", *overrides], config_name="sample")


def test_sample_py_guides_the_exact_score_with_the_trained_classifier(toy_classifier, tmp_path):
    ckpt = toy_classifier / "checkpoints" / "last.ckpt"
    accuracy = {}
    for scale in (0, 1, 3):
        cfg = _sample_cfg(tmp_path / str(scale), ["task=labels", f"task.classifier={ckpt}", "task.labels=all",
                                                  "task.per_class=40", f"task.classifier_scale={scale}"])
        sample(cfg)
        metrics = json.loads((tmp_path / str(scale) / "run" / "metrics.json").read_text())
        assert metrics["classifier"] == str(ckpt) and metrics["classifier_scale"] == scale
        labels = np.load(tmp_path / str(scale) / "run" / "samples.npz")["labels"]
        assert labels.tolist() == torch.arange(8).repeat_interleave(40).tolist()
        accuracy[scale] = metrics["label_accuracy"]["accuracy"]
    assert accuracy[0] < 0.25  # unguided: the classes fall where they may (1/8 by chance)
    assert accuracy[1] >= 0.9  # Bayes' rule with a learned classifier (the exact one: >= 0.99, test above)
    assert accuracy[3] >= max(accuracy[1], 0.97)  # a larger scale sharpens the classes (Dhariwal & Nichol 2021)


def test_sampling_mistakes_end_in_one_clear_message(toy_classifier, tmp_path):
    ckpt = toy_classifier / "checkpoints" / "last.ckpt"
    cases = [
        (["task.label=3"], "or guide this one with task.classifier="),
        ([f"task.classifier={tmp_path}/missing.ckpt", "task.label=3"], "classifier checkpoint not found"),
        ([f"task.classifier={ckpt}"], "say which with task.label=<k> or task.labels=all"),
        ([f"task.classifier={ckpt}", "task.label=8"], "class 8 does not exist"),
        ([f"task.classifier={ckpt}", "task.label=1", "task.guidance=2"], "the scale is task.classifier_scale"),
        ([f"task.classifier={ckpt}", "data=toy_two_modes", "task.label=1"],
         "has 8 classes but the score model's data have 2"),
        ([f"task.classifier={ckpt}", "sde=ve", "task.label=1"], "train the classifier with the same sde"),
        ([f"ckpt_path={ckpt}", "task.label=1"], "is a noisy classifier, not a score model"),
    ]
    for overrides, message in cases:
        with pytest.raises(UserError, match=message):
            sample(_sample_cfg(tmp_path, ["task=labels", *overrides]))


def test_a_classifier_for_other_data_shapes_is_refused(toy_classifier):
    loaded = load_classifier(str(toy_classifier / "checkpoints" / "last.ckpt"))

    class Images:
        sample_shape, num_classes = (1, 28, 28), 8

    class Trained:
        datamodule, score, sde = Images(), None, loaded.sde

    with pytest.raises(UserError, match=r"trained on data of shape \(2,\), the score model on \(1, 28, 28\)"):
        check_compatible(loaded, Trained())


def test_train_refuses_a_classifier_model_without_the_classifier_module(tmp_path):
    cfg = make_cfg(tmp_path, TOY + ["classifier_module=null"])
    with pytest.raises(UserError, match="classifier_module is not set"):
        train(cfg)


def test_mnist_classifier_experiment_runs_on_real_digits(tmp_path):
    """fast_dev_run of experiment=mnist_noisy_classifier (a tiny width) on the real MNIST files."""
    shared = Path(os.environ.get("SCORELAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not list((shared / "MNIST" / "raw").glob("*.gz")):
        pytest.skip(f"real MNIST files not found in {shared}/MNIST/raw (set SCORELAB_SHARED_DATA to them)")
    shutil.copytree(shared / "MNIST" / "raw", tmp_path / "data" / "MNIST" / "raw")
    cfg = make_cfg(tmp_path, ["experiment=mnist_noisy_classifier", f"paths.data_dir={tmp_path / 'data'}",
                              "trainer.fast_dev_run=2", "data.batch_size=8", "model.net.ch=8", "logger=none",
                              "trainer.enable_progress_bar=false"])
    train(cfg)
    assert cfg.model.net.num_classes == 10 and cfg.classifier_module.accuracy_times[-1] == 0.99


def test_guided_image_sampling_draws_each_sample_for_its_label(tmp_path):
    """The image path of sample.py: an image score model, a noisy classifier of the same images, labels=[3,5]."""
    from scorelab.data.sample_files import ImageSet

    from .evaluation_utils import TINY_IMAGE_RUN

    data = tmp_path / "real.npz"
    images = torch.randint(0, 256, (40, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    np.savez(data, x=images.numpy(), y=np.arange(40) % 10)  # 10 classes
    train(make_cfg(tmp_path / "score", TINY_IMAGE_RUN + [f"data.path={data}", "logger=none"]))
    train(make_cfg(tmp_path / "cls", [
        "experiment=mnist_noisy_classifier", "sde=vp", "data=npz", f"data.path={data}", "data.val_size=8",
        "data.batch_size=8",
        "model.net.ch=8", "model.net.ch_mult=[1,2]", "trainer.max_steps=2", "trainer.max_time=null", "logger=none",
        "trainer.val_check_interval=1.0",
        "trainer.enable_progress_bar=false"]))
    cfg = make_cfg(tmp_path / "sample", [
        f"ckpt_path={tmp_path / 'score' / 'run' / 'checkpoints' / 'last.ckpt'}", "task=labels", "task.labels=[3,5]",
        "task.per_class=2", f"task.classifier={tmp_path / 'cls' / 'run' / 'checkpoints' / 'last.ckpt'}",
        "task.classifier_scale=2",
        "progress=false", "batch_size=3"], config_name="sample")
    folder = sample(cfg)
    assert len(ImageSet(folder)) == 4
    summary = json.loads((folder.parent / "sample.json").read_text())
    assert summary["labels"] == [3, 3, 5, 5] and summary["classifier_scale"] == 2.0
