"""Class-conditional networks, label dropout and classifier-free guidance, checked against exact answers: the
conditional and unconditional scores of a Gaussian mixture are known in closed form."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from scorelab.cli import sample, train
from scorelab.cli.common import fill_from_data
from scorelab.cli.errors import UserError
from scorelab.core.rng import ShardedGenerator
from scorelab.data.toy import GaussianMixture
from scorelab.guidance.free import ClassifierFreeGuidance
from scorelab.guidance.labels import BoundLabels
from scorelab.lit.module import ScoreModule
from scorelab.metrics.label_accuracy import label_accuracy
from scorelab.models import ScoreMLP, ScoreModel, ScoreUNet
from scorelab.objectives.score_matching import DSMLoss, ISMLoss
from scorelab.sde import VPSDE

from .evaluation_utils import TINY_IMAGE_RUN, write_images_npz
from .platform_utils import make_cfg

UNET_SMALL = dict(in_channels=1, image_size=28, ch=16, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(7,),
                  dropout=0.0)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conditional_mlp(num_classes: int = 3, seed: int = 0) -> ScoreModel:
    torch.manual_seed(seed)
    model = ScoreModel(ScoreMLP(dim=2, width=32, depth=2, embed_dim=16, num_classes=num_classes), VPSDE())
    for p in model.parameters():  # random weights everywhere, so that labels change the output
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


# --- networks ---------------------------------------------------------------------------------------------------
def test_unconditional_networks_keep_their_parameters_and_a_label_table_adds_k_plus_one_rows():
    unet = ScoreUNet(**UNET_SMALL)
    assert _count(unet) == 1_029_905  # conf/model/unet_small.yaml's documented count
    assert _count(ScoreUNet(**UNET_SMALL, num_classes=None)) == 1_029_905
    conditional = ScoreUNet(**UNET_SMALL, num_classes=10)
    assert _count(conditional) - _count(unet) == 11 * 64  # (10 classes + null) x the time embedding (4 ch)
    assert set(conditional.state_dict()) - set(unet.state_dict()) == {"label_embed.table.weight"}
    mlp, cmlp = ScoreMLP(), ScoreMLP(num_classes=8)
    assert not any("label" in k for k in mlp.state_dict())
    assert _count(cmlp) - _count(mlp) == 9 * 128  # the class default embed_dim
    # an unconditional network refuses labels instead of ignoring them
    with pytest.raises(ValueError, match="has no classes"):
        ScoreModel(mlp, VPSDE())(torch.zeros(2, 2), torch.full((2,), 0.5), torch.tensor([0, 1]))


def test_no_label_is_the_null_class_and_labels_change_the_score():
    model = _conditional_mlp()
    x, t = torch.randn(4, 2), torch.rand(4) * 0.9 + 0.05
    null = torch.full((4,), 3)
    assert torch.equal(model(x, t), model(x, t, null))
    assert not torch.allclose(model(x, t, torch.tensor([0, 1, 2, 0])), model(x, t))
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        model(x, t, torch.tensor([0, 1, 4, 0]))


# --- guidance ---------------------------------------------------------------------------------------------------
def test_guidance_scale_0_is_exactly_the_unconditional_model_and_1_the_conditional():
    model = _conditional_mlp()
    x, t, y = torch.randn(6, 2), torch.rand(6) * 0.9 + 0.05, torch.tensor([0, 1, 2, 2, 1, 0])
    assert torch.equal(ClassifierFreeGuidance(model, y, 0.0)(x, t), model(x, t))
    assert torch.equal(ClassifierFreeGuidance(model, y, 1.0)(x, t), model(x, t, y))
    cond, uncond = model(x, t, y), model(x, t)
    for w in (2.0, -0.5, 4.0):  # one doubled batch, the same numbers as two separate evaluations
        torch.testing.assert_close(ClassifierFreeGuidance(model, y, w)(x, t), uncond + w * (cond - uncond))
    # one label for every example accepts any batch size; per-example labels must match the batch
    assert torch.equal(ClassifierFreeGuidance(model, 2, 3.0)(x[:2], t[:2]),
                       ClassifierFreeGuidance(model, torch.tensor([2, 2]), 3.0)(x[:2], t[:2]))
    with pytest.raises(ValueError, match="6 labels were given but the score was asked for 2"):
        ClassifierFreeGuidance(model, y, 2.0)(x[:2], t[:2])
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        ClassifierFreeGuidance(ScoreModel(ScoreMLP(), VPSDE()), y, 2.0)
    with pytest.raises(ValueError, match="class indices 0..2"):
        ClassifierFreeGuidance(model, torch.tensor([3]), 2.0)


def _two_gaussians_by_hand(x, a, s, y, w):
    """The guided score of 0.7 N(-2, 0.5^2) + 0.3 N(1, 0.3^2) (1-D) pushed through x -> a x + s z, by hand."""
    weights, means, stds = [0.7, 0.3], [-2.0, 1.0], [0.5, 0.3]
    var = [a**2 * sd**2 + s**2 for sd in stds]
    dens = [wk * math.exp(-(x - a * m) ** 2 / (2 * v)) / math.sqrt(2 * math.pi * v)
            for wk, m, v in zip(weights, means, var, strict=True)]
    comp = [-(x - a * m) / v for m, v in zip(means, var, strict=True)]
    uncond = sum(d * c for d, c in zip(dens, comp, strict=True)) / sum(dens)
    return uncond + w * (comp[y] - uncond)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_guided_oracle_equals_the_closed_form_and_the_score_of_p_times_p_y_given_x_to_the_w(w):
    mixture = GaussianMixture([0.7, 0.3], [[-2.0], [1.0]], stds=[0.5, 0.3])
    sde = VPSDE()
    oracle = mixture.oracle(sde, conditional=True)
    x = torch.linspace(-3, 2, 11, dtype=torch.float64)[:, None]
    t = torch.full((11,), 0.3, dtype=torch.float64)
    y = torch.tensor([0, 1] * 5 + [1])
    guided = ClassifierFreeGuidance(oracle, y, w)(x, t)
    a, s = float(sde.mean_coeff(t[:1])), float(sde.marginal_std(t[:1]))
    expected = [_two_gaussians_by_hand(float(xi), a, s, int(yi), w) for xi, yi in zip(x[:, 0], y, strict=True)]
    torch.testing.assert_close(guided[:, 0], torch.tensor(expected, dtype=torch.float64))
    # ... which is grad log [p_t(x) p_t(y | x)^w]: the unconditional score plus w times that of the posterior
    xg = x.clone().requires_grad_(True)
    comp_logp, _ = mixture._perturbed_terms(xg, torch.full((11,), a, dtype=torch.float64),
                                            torch.full((11,), s, dtype=torch.float64))
    log_post = torch.log_softmax(comp_logp, dim=1)[torch.arange(11), y]
    target = torch.autograd.grad((torch.logsumexp(comp_logp, 1) + w * log_post).sum(), xg)[0]
    torch.testing.assert_close(guided, target)


# --- training -----------------------------------------------------------------------------------------------------
def _module(p: float) -> ScoreModule:
    return ScoreModule(_conditional_mlp(num_classes=4), VPSDE(), label_dropout=p)


def test_label_dropout_rate_determinism_and_shards():
    y = torch.randint(0, 4, (40_000,), generator=torch.Generator().manual_seed(1))
    module = _module(0.25)
    dropped = module.drop_labels(y, torch.Generator().manual_seed(7))
    null = dropped == 4
    assert abs(null.double().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 40_000)
    assert torch.equal(dropped[~null], y[~null])  # the others keep their label
    assert torch.equal(dropped, module.drop_labels(y, torch.Generator().manual_seed(7)))  # a function of the seed
    assert torch.equal(_module(0.0).drop_labels(y, torch.Generator().manual_seed(7)), y)
    assert bool((_module(1.0).drop_labels(y, torch.Generator().manual_seed(7)) == 4).all())
    # two data-parallel ranks, each with its rows of the global batch, drop exactly what one process drops
    small = y[:8]
    whole = module.drop_labels(small, torch.Generator().manual_seed(3))
    for rank in (0, 1):
        rows = list(range(rank, 8, 2))
        shard = ShardedGenerator(torch.Generator().manual_seed(3), rows, 8)
        assert torch.equal(module.drop_labels(small[rows], shard), whole[rows])
    with pytest.raises(ValueError, match="label_dropout must be a probability"):
        _module(1.5)


def test_losses_train_the_score_of_the_bound_labels():
    """DSM and ISM see the labels: with the exact conditional score of the labels drawn, DSM's value is its known
    minimum; with the wrong labels it is larger (Vincent 2011: the gap is E||s - s*||^2)."""
    mixture = GaussianMixture([0.5, 0.5], [[-3.0, 0.0], [3.0, 0.0]], stds=0.4)
    oracle = mixture.oracle(VPSDE(), conditional=True)
    x0, y = mixture.sample(4000, generator=torch.Generator().manual_seed(0), return_labels=True)
    loss = DSMLoss(VPSDE())
    right = loss(BoundLabels(oracle, y), x0, generator=torch.Generator().manual_seed(1))
    wrong = loss(BoundLabels(oracle, 1 - y), x0, generator=torch.Generator().manual_seed(1))
    unconditional = loss(oracle, x0, generator=torch.Generator().manual_seed(1))
    assert right < unconditional < wrong
    ism = ISMLoss(VPSDE(), trace="exact")(BoundLabels(oracle, y[:64]), x0[:64],
                                          generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(ism)
    with pytest.raises(ValueError, match="4000 labels are bound but the score was asked for 3"):
        BoundLabels(oracle, y)(x0[:3], torch.full((3,), 0.5))


def test_num_classes_auto_comes_from_the_data_and_is_refused_without_labels():
    net = OmegaConf.create({"_target_": "scorelab.models.ScoreMLP", "dim": None, "num_classes": "auto"})
    fill_from_data(net, (2,), num_classes=8)
    assert net.dim == 2 and net.num_classes == 8
    with pytest.raises(UserError, match="needs labelled data"):
        fill_from_data(OmegaConf.create({"_target_": "scorelab.models.ScoreMLP", "num_classes": "auto"}), (2,), None)
    with pytest.raises(UserError, match="must be 0 \\(unconditional\\), auto"):
        fill_from_data(OmegaConf.create({"_target_": "scorelab.models.ScoreMLP", "num_classes": "yes"}), (2,), 8)


def test_label_accuracy_counts_hits_per_class():
    result = label_accuracy(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0]), 4)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["accuracy_per_class"] == {"0": 0.5, "1": 0.5, "2": 1.0, "3": None}
    assert result["count_per_class"] == {"0": 2, "1": 2, "2": 2, "3": 0}


# --- sample.py ----------------------------------------------------------------------------------------------------
def _sample_cfg(tmp_path, name: str, overrides: list[str]):
    cfg = make_cfg(tmp_path, overrides + ["progress=false"], config_name="sample")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
    return cfg


ORACLE = ["model=oracle", "model.conditional=true", "data=toy_eight_gaussians", "sampler=euler_maruyama",
          "sampler.steps=20"]


def test_sample_cli_guidance_0_is_the_unconditional_sampler_and_labels_follow_the_position(tmp_path):
    plain = np.load(sample(_sample_cfg(tmp_path, "plain", ORACLE + ["n_samples=24"])))
    zero = np.load(sample(_sample_cfg(tmp_path, "zero", ORACLE + ["n_samples=24", "task=labels", "task.label=3",
                                                                  "task.guidance=0"])))
    assert np.array_equal(zero["x"], plain["x"]) and zero["labels"].tolist() == [3] * 24
    grids = {}
    for batch_size in (5, 64):
        path = sample(_sample_cfg(tmp_path, f"all{batch_size}", ORACLE + ["task=labels", "task.labels=all",
                                                                          "task.per_class=3", "task.guidance=1",
                                                                          f"batch_size={batch_size}"]))
        grids[batch_size] = np.load(path)
    assert grids[5]["labels"].tolist() == [k for k in range(8) for _ in range(3)]
    assert grids[5]["seeds"].tolist() == list(range(24))
    np.testing.assert_allclose(grids[5]["x"], grids[64]["x"], atol=1e-5)
    assert np.array_equal(grids[5]["labels"], grids[64]["labels"])
    metrics = json.loads((tmp_path / "all5" / "metrics.json").read_text())
    assert metrics["label_accuracy"]["accuracy"] == 1.0  # the exact conditional score draws the asked-for mode
    assert metrics["guidance"] == 1.0 and metrics["per_class"] == 3


@pytest.mark.parametrize("overrides, expected", [
    (["model.conditional=false", "task.label=1"], "task=labels needs a class-conditional model"),
    (["task.label=8"], "class 8 does not exist: this model has 8 classes, 0..7"),
    (["task.labels=[2,-1]"], "class -1 does not exist"),
    (["task.label=1", "task.labels=all"], "not both"),
    (["task.labels=some"], "labels must be all or a list of class indices"),
    (["task.guidance=2.0"], "say which with task.label=<k> or task.labels=all"),
    (["task.label=1", "task.guidance=nan"], "guidance must be a finite number"),
    (["task.labels=all", "task.per_class=0"], "per_class must be a positive integer"),
    (["task.label=1", "task.classifier_scale=2"], "task.classifier_scale scales a noisy classifier's guidance"),
])
def test_sample_cli_refuses_bad_class_requests_with_one_message(tmp_path, overrides, expected):
    with pytest.raises(UserError, match=expected):
        sample(_sample_cfg(tmp_path, "bad", ORACLE + ["n_samples=4", "task=labels"] + overrides))


TOY_COND_TRAIN = [
    "experiment=toy_two_modes", "model.net.num_classes=auto", "module.label_dropout=0.2", "trainer.max_steps=200",
    "trainer.enable_progress_bar=false", "trainer.check_val_every_n_epoch=1", "data.n_train=4096", "data.n_val=256",
    "data.batch_size=128", "optimizer.lr=3e-3", "model.net.width=32", "model.net.depth=1", "sampler.steps=10",
    "callbacks.samples.n_samples=50", "callbacks.toy_metrics=null", "optimized_metric=null", "logger=none",
]


def test_a_conditional_toy_model_trains_and_samples_the_asked_for_component(tmp_path):
    """two_modes has weights 0.8 / 0.2: asked for the rare mode, a trained conditional model must draw it far more
    often than its prior weight, and guidance 0 must give back about the prior."""
    train(make_cfg(tmp_path, TOY_COND_TRAIN))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    accuracy = {}
    for w in (0.0, 1.0, 3.0):
        cfg = _sample_cfg(tmp_path, f"w{w}", [f"ckpt_path={ckpt}", "task=labels", "task.label=1", f"task.guidance={w}",
                                              "n_samples=300",
                                              "sampler=euler_maruyama", "sampler.steps=30"])
        sample(cfg)
        accuracy[w] = json.loads((tmp_path / f"w{w}" / "metrics.json").read_text())["label_accuracy"]["accuracy"]
    assert abs(accuracy[0.0] - 0.2) < 0.1
    assert accuracy[1.0] > 0.85 and accuracy[3.0] >= accuracy[1.0] - 0.02


def test_image_sample_cli_writes_a_grid_one_row_per_class_and_the_labels(tmp_path):
    data = write_images_npz(tmp_path / "real.npz", 40)
    train(make_cfg(tmp_path, TINY_IMAGE_RUN + [f"data.path={data}", "model.net.num_classes=auto",
                                               "module.label_dropout=0.5"]))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    common = [f"ckpt_path={ckpt}", "sampler=euler_maruyama", "sampler.steps=2", "batch_size=7"]
    folder = sample(_sample_cfg(tmp_path, "grid", common + ["task=labels", "task.labels=[1,4,7]", "task.per_class=3",
                                                             "task.guidance=2"]))
    shards = sorted(folder.glob("shard_*.npz"))
    labels = np.concatenate([np.load(p)["labels"] for p in shards])
    assert labels.tolist() == [1, 1, 1, 4, 4, 4, 7, 7, 7]
    summary = json.loads((folder.parent / "sample.json").read_text())
    assert summary["labels"] == labels.tolist() and summary["guidance"] == 2.0 and summary["n_samples"] == 9
    from PIL import Image

    width, height = Image.open(folder.parent / "samples.png").size
    assert (width, height) == (2 + 3 * (16 + 2), 2 + 3 * (16 + 2))  # 3 columns (per class) x 3 rows (classes)
    # guidance 0 with any label is the unconditional model: the same images as no label at all
    plain = sample(_sample_cfg(tmp_path, "plain", common + ["n_samples=4"]))
    zero = sample(_sample_cfg(tmp_path, "zero", common + ["n_samples=4", "task=labels", "task.label=5",
                                                          "task.guidance=0"]))
    read = [np.concatenate([np.load(p)["x"] for p in sorted(f.glob("shard_*.npz"))]) for f in (plain, zero)]
    assert np.array_equal(read[0], read[1])
    with pytest.raises(UserError, match="task.label is not a setting of scorelab.tasks.Colorize"):
        sample(_sample_cfg(tmp_path, "task", [f"ckpt_path={ckpt}", "task=colorize", "+task.label=1"]))
