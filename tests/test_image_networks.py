"""Tests for the image score networks DDPM++ / NCSN++ and their building blocks."""
from __future__ import annotations

import functools
from pathlib import Path

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from scorelab.models import layers
from scorelab.models.unet import ScoreUNet

CONF = Path(__file__).resolve().parents[1] / "conf"
DDPMPP, NCSNPP = "ddpmpp", "ncsnpp"  # the two families, as their conf/model presets

# (channels, size, ch_mult, attention resolutions): MNIST goes 28 -> 14 -> 7, CIFAR-10 32 -> 16 -> 8.
MNIST = (1, 28, (1, 2, 2), (7,))
CIFAR = (3, 32, (1, 2, 2), (16,))


@functools.cache
def preset(name: str) -> DictConfig:
    """The backbone config of ``model=<name>``, composed as train.py composes it (presets extend ``ddpmpp``)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name=f"model/{name}").model.net


def tiny(family: str, shape: tuple = MNIST, **kwargs) -> ScoreUNet:
    """A small network of ``family`` (a preset name: its architecture, smaller sizes) for the given data shape."""
    channels, size, ch_mult, attn = shape
    defaults = {"in_channels": channels, "image_size": size, "ch": 16, "ch_mult": ch_mult,
                "num_res_blocks": 1, "attn_resolutions": attn, "dropout": 0.0}
    return hydra.utils.instantiate(preset(family), **(defaults | kwargs))


def perturb_(net: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Add Gaussian noise to every parameter, so zero-initialised output layers no longer hide the input."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn_like(p))
    return net


def num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["mnist", "cifar"])
@pytest.mark.parametrize("family", [DDPMPP, NCSNPP])
def test_output_has_input_shape(family, shape):
    torch.manual_seed(0)
    net = tiny(family, shape)
    x = torch.randn(2, shape[0], shape[1], shape[1])
    y = net(x, torch.tensor([1.0, 500.0]))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("options", [
    {"progressive": "output_skip", "progressive_input": "input_skip", "progressive_combine": "cat"},
    {"progressive": "residual", "progressive_input": "residual"},
    {"resblock_type": "ddpm", "fir": True, "progressive_input": "input_skip"},
    {"resblock_type": "ddpm", "resamp_with_conv": False, "progressive": "output_skip"},
], ids=["skip-cat", "residual", "ddpm-fir", "ddpm-pool"])
def test_architecture_variants_keep_shape(options):
    torch.manual_seed(0)
    net = perturb_(tiny(NCSNPP, MNIST, **options))
    x = torch.randn(2, 1, 28, 28)
    y = net(x, torch.zeros(2))
    assert y.shape == x.shape
    assert y.abs().sum() > 0


@pytest.mark.parametrize("name, expected", [
    ("ddpmpp", 61_804_419),
    ("ddpmpp_deep", 106_632_579),
    ("ncsnpp", 62_758_915),
    ("ncsnpp_deep", 107_587_075),
    ("unet_small", 1_029_905),
])
def test_preset_parameter_counts_match_reference(name, expected):
    shape = dict(in_channels=1, image_size=28) if name == "unet_small" else dict(in_channels=3, image_size=32)
    with torch.device("meta"):
        net = hydra.utils.instantiate(preset(name), **shape)
    assert type(net) is ScoreUNet
    assert num_params(net) == expected


def test_small_preset_runs_on_mnist_batch():
    torch.manual_seed(0)
    net = hydra.utils.instantiate(preset("unet_small"), in_channels=1, image_size=28)
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.tensor([0.0, 999.0])).shape == x.shape


@pytest.mark.parametrize("family", [DDPMPP, NCSNPP])
def test_reference_init_starts_with_near_zero_output(family):
    # init_scale=0 gives the last conv variance scale 1e-10 (Ho et al. 2020): an untrained net outputs ~0.
    x, t = torch.randn(2, 1, 28, 28), torch.ones(2)
    torch.manual_seed(0)
    y_zero = tiny(family, init_scale=0.0)(x, t)
    torch.manual_seed(0)
    y_one = tiny(family, init_scale=1.0)(x, t)
    assert 0 < y_zero.abs().max() < 1e-3
    assert y_one.abs().max() > 1e-1


@pytest.mark.parametrize("family, labels", [(DDPMPP, (10.0, 900.0)), (NCSNPP, (-3.0, 2.0))])
def test_output_depends_on_noise_label(family, labels):
    torch.manual_seed(0)
    net = perturb_(tiny(family)).eval()
    x = torch.randn(1, 1, 28, 28).repeat(2, 1, 1, 1)
    y = net(x, torch.tensor(labels))
    assert (y[0] - y[1]).abs().max() > 1e-3 * y.abs().max()


@pytest.mark.parametrize("family", [DDPMPP, NCSNPP])
def test_channels_last_matches_contiguous(family):
    torch.manual_seed(0)
    net = perturb_(tiny(family, CIFAR)).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 2.0])
    y = net(x, t)
    net = net.to(memory_format=torch.channels_last)
    y_cl = net(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(y_cl, y, atol=1e-4, rtol=1e-4)


def test_batch_elements_are_independent():
    torch.manual_seed(0)
    net = perturb_(tiny(NCSNPP)).eval()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0.1, 1.0, 2.0])
    torch.testing.assert_close(net(x, t)[1:2], net(x[1:2], t[1:2]), atol=1e-5, rtol=1e-4)


def test_compiles_without_graph_breaks():
    torch.manual_seed(0)
    net = perturb_(tiny(NCSNPP, progressive="output_skip")).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([0.5, 1.5])
    compiled = torch.compile(net, backend="eager", fullgraph=True)  # fullgraph: fails on any graph break
    torch.testing.assert_close(compiled(x, t), net(x, t))


@pytest.mark.slow
def test_inductor_compile_matches_eager():
    torch.manual_seed(0)
    net = perturb_(tiny(DDPMPP)).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3.0, 700.0])
    torch.testing.assert_close(torch.compile(net)(x, t), net(x, t), atol=1e-4, rtol=1e-4)


def test_image_size_must_round_trip():
    with pytest.raises(ValueError, match="divisible"):
        ScoreUNet(in_channels=1, image_size=28, ch=16, ch_mult=(1, 2, 2, 2))


def test_attention_uses_sdpa_and_matches_softmax_formula(monkeypatch):
    torch.manual_seed(0)
    block = perturb_(layers.AttnBlock(8, skip_rescale=True))
    x = torch.randn(2, 8, 4, 4)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    out = block(x)
    assert calls, "AttnBlock must call scaled_dot_product_attention"
    tokens = block.norm(x).flatten(2).transpose(1, 2)
    q, k, v = block.qkv(tokens).chunk(3, dim=-1)
    attn = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1) @ v
    expected = (x + block.proj_out(attn).transpose(1, 2).reshape(2, 8, 4, 4)) / 2**0.5
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_fir_with_box_filter_is_average_pool_and_nearest():
    x = torch.randn(2, 3, 8, 8)
    box = layers.fir_kernel_2d([1, 1])
    torch.testing.assert_close(layers.fir_downsample_2d(x, box), F.avg_pool2d(x, 2))
    torch.testing.assert_close(layers.fir_upsample_2d(x, box), F.interpolate(x, scale_factor=2))


def test_fir_resampling_preserves_constants_and_shapes():
    k = layers.fir_kernel_2d([1, 3, 3, 1])
    x = torch.full((1, 2, 8, 8), 3.0)
    down, up = layers.fir_downsample_2d(x, k), layers.fir_upsample_2d(x, k)
    assert down.shape == (1, 2, 4, 4) and up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0))  # away from the border
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0))


@pytest.mark.parametrize("resample", ["up", "down"])
def test_fir_conv_with_identity_weight_equals_fir_resampling(resample):
    x = torch.randn(2, 3, 8, 8)
    conv = layers.FIRConv2d(3, 3, resample)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[torch.arange(3), torch.arange(3), 1, 1] = 1.0
    k = layers.fir_kernel_2d([1, 3, 3, 1])
    expected = layers.fir_upsample_2d(x, k) if resample == "up" else layers.fir_downsample_2d(x, k)
    torch.testing.assert_close(conv(x), expected)


def test_default_init_has_fan_avg_variance():
    torch.manual_seed(0)
    w = layers.default_init_(torch.empty(256, 128, 3, 3))
    fan_avg = (256 + 128) * 9 / 2
    assert abs(w.var().item() * fan_avg - 1.0) < 0.05  # U(-b, b) with b = sqrt(3 / fan_avg)
    assert layers.default_init_(torch.empty(4, 4), scale=0.0).abs().max() < 1e-5
