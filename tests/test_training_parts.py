"""Score parameterisations, the EMA and the learning-rate schedules against values written out by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from scorelab.core.rng import mix_seed
from scorelab.lit.ema import EMA, ema_decay_at
from scorelab.lit.schedules import linear_warmup, warmup_cosine, warmup_stable_decay
from scorelab.models import ScoreModel
from scorelab.sde import VESDE, VPSDE

# VP (beta 0.1 -> 20) at t = 0.5: B = 2.5375, a = exp(-B / 2) = 0.281183, s = sqrt(1 - exp(-B)) = 0.959654.
A, S = 0.2811828808, 0.9596542021


class Probe(nn.Module):
    """A backbone that returns a fixed output and records what it was given."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out, self.seen = out, {}

    def forward(self, x, label):
        self.seen = {"x": x.clone(), "label": label.clone()}
        return self.out.expand_as(x)


X = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
OUT = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
T = torch.tensor([0.5], dtype=torch.float64)


@pytest.mark.parametrize("output, expected", [
    ("eps", -OUT / S),  # the network predicts the noise z: s = -z / s(t)
    ("score", OUT),  # the network output is the score
    ("x0", -(X - A * OUT) / S**2),  # the network predicts x0: s = -(x - a x0) / s(t)^2
    ("scaled_score", OUT / S),  # the network predicts s(t) score (the reference's scale_by_sigma): s = net / s(t)
])
def test_output_parameterisations(output, expected):
    model = ScoreModel(Probe(OUT), VPSDE(), output=output)
    torch.testing.assert_close(model(X, T), expected)


def test_x0_parameterisation_of_the_true_x0_is_the_exact_score():
    # x = a x0 + s z with x0 known: the exact conditional score is -z / s.
    x0, z = torch.tensor([[0.3, -0.7]], dtype=torch.float64), torch.tensor([[1.5, 0.5]], dtype=torch.float64)
    model = ScoreModel(Probe(x0), VPSDE(), output="x0")
    torch.testing.assert_close(model(A * x0 + S * z, T), -z / S)


@pytest.mark.parametrize("noise_label, expected", [("sde", 499.5), ("t", 0.5), ("log_std", -0.0411822656)])
def test_noise_labels(noise_label, expected):
    net = Probe(OUT)
    ScoreModel(net, VPSDE(), noise_label=noise_label)(X, T)
    assert net.seen["label"].item() == pytest.approx(expected, rel=1e-8)


def test_uncentered_model_maps_unit_interval_inputs_to_minus_one_one():
    # The reference's data.centered = False: data in [0, 1], the network sees 2 x - 1.
    x = torch.tensor([[0.0, 0.25, 1.0]], dtype=torch.float64)
    net = Probe(OUT[:, :1])
    ScoreModel(net, VESDE(), centered=False)(x, T)
    torch.testing.assert_close(net.seen["x"], torch.tensor([[-1.0, -0.5, 1.0]], dtype=torch.float64))
    net = Probe(OUT[:, :1])
    ScoreModel(net, VESDE())(x, T)
    torch.testing.assert_close(net.seen["x"], x)


def test_scale_input_divides_by_the_marginal_std_of_the_data():
    net = Probe(OUT)
    ScoreModel(net, VPSDE(), scale_input=True, sigma_data=0.5)(X, T)
    torch.testing.assert_close(net.seen["x"], X / 0.9698980053)  # sqrt(a^2 0.5^2 + s^2)
    net = Probe(OUT)
    ScoreModel(net, VESDE(sigma_min=0.01, sigma_max=50.0), scale_input=True, sigma_data=0.5)(X, T)
    torch.testing.assert_close(net.seen["x"], X / (0.25 + 0.5) ** 0.5)  # a = 1, s = sigma(0.5) = sqrt(0.5)
    net = Probe(OUT)
    ScoreModel(net, VPSDE(), scale_input=False)(X, T)
    torch.testing.assert_close(net.seen["x"], X)


def test_ema_decay_schedule():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 100) == pytest.approx(101 / 110)
    assert ema_decay_at(0.999, 10**6) == 0.999  # the rate caps it
    assert ema_decay_at(0.999, 1, warmup=False) == 0.999


def test_ema_is_the_lerp_with_the_warmed_up_decay():
    model = nn.BatchNorm1d(1)  # a float weight and an integer buffer
    ema = EMA(model, decay=0.9, warmup=True)
    values = [2.0, 4.0, 8.0]
    expected = None
    for n, value in enumerate(values):
        with torch.no_grad():
            model.weight.fill_(value)
        model.num_batches_tracked.fill_(10 * (n + 1))
        ema.update_parameters(model)
        if n == 0:
            expected = value  # the first update copies
        else:
            decay = min(0.9, (1 + n) / (10 + n))  # 2/11, then 3/12
            expected = decay * expected + (1 - decay) * value
        assert ema.module.weight.item() == pytest.approx(expected)
        assert ema.module.num_batches_tracked.item() == 10 * (n + 1)  # integers are copied, not averaged
    assert expected == pytest.approx(0.25 * (2 / 11 * 2.0 + 9 / 11 * 4.0) + 0.75 * 8.0)
    assert not any(p.requires_grad for p in ema.module.parameters())


def _lrs(make, steps: int, base: float = 2.0) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    scheduler, lrs = make(opt), []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def test_linear_warmup_schedule():
    assert _lrs(lambda o: linear_warmup(o, warmup_steps=4), 6) == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert _lrs(lambda o: linear_warmup(o, warmup_steps=0), 2) == pytest.approx([2.0, 2.0])


def test_warmup_cosine_schedule():
    # Warm-up over 2 steps, then 0.1 + 0.9 (1 + cos(pi p)) / 2 with p = (step - 2) / 4, then flat at 0.1.
    factors = [0.5, 1.0, 1.0, 0.8681980515, 0.55, 0.2318019485, 0.1, 0.1]
    lrs = _lrs(lambda o: warmup_cosine(o, warmup_steps=2, total_steps=6, min_ratio=0.1), 8)
    assert lrs == pytest.approx([2.0 * f for f in factors])


def test_warmup_stable_decay_schedule():
    # Warm-up over 2 steps, the base rate up to step 6 = 10 - 0.4 * 10, then linearly down to 0.2 at step 10.
    factors = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.2]
    lrs = _lrs(lambda o: warmup_stable_decay(o, warmup_steps=2, total_steps=10, decay_fraction=0.4, min_ratio=0.2), 12)
    assert lrs == pytest.approx([2.0 * f for f in factors])


@pytest.mark.parametrize("make, match", [
    (lambda o: linear_warmup(o, warmup_steps=-1), "warmup_steps"),
    (lambda o: warmup_stable_decay(o, decay_fraction=0.0), "decay_fraction"),
    (lambda o: warmup_stable_decay(o, warmup_steps=90, total_steps=100, decay_fraction=0.2), "warmup_steps"),
    (lambda o: warmup_cosine(o, warmup_steps=10, total_steps=10), "total_steps"),
])
def test_invalid_schedules_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0))


def test_position_seeds_differ_per_rank_step_and_stream():
    seeds = {mix_seed(0, step, 0, rank, stream) for step in range(50) for rank in range(4) for stream in (0, 1)}
    assert len(seeds) == 50 * 4 * 2 and all(0 <= s < 2**63 for s in seeds)
    assert mix_seed(0, 5, 0, 1, 1) == mix_seed(0, 5, 0, 1, 1)  # a pure function of the position


def test_every_rank_draws_its_own_training_noise_and_dropout():
    """Rank r keeps rows r, r + W, ... of the global batch's noise: ranks differ, and together they hold exactly the
    noise one process with the whole batch draws."""
    from types import SimpleNamespace

    from scorelab.core.rng import sample_noise
    from scorelab.lit.module import ScoreModule
    from scorelab.models import ScoreMLP

    def draws(rank: int, step: int, world: int = 2, local: int = 4) -> tuple[torch.Tensor, int]:
        module = ScoreModule(ScoreModel(ScoreMLP(dim=2, width=8, depth=1, embed_dim=8), VPSDE()), VPSDE())
        module._trainer = SimpleNamespace(accumulate_grad_batches=1, global_rank=rank, global_step=step,
                                          world_size=world)
        gen = module._step_generator(torch.device("cpu"), batch_idx=step, local=local)
        return sample_noise((local, 3), torch.empty(()), gen), module._position_seed(step, stream=1)

    (n0, d0), (n1, d1), (again, d_again) = draws(0, 7), draws(1, 7), draws(0, 7)
    assert not torch.equal(n0, n1) and d0 != d1  # ranks differ
    assert torch.equal(n0, again) and d0 == d_again  # a rank repeats itself at the same step (exact resume)
    assert not torch.equal(n0, draws(0, 8)[0]) and d0 != draws(0, 8)[1]  # and moves on with the step
    single, _ = draws(0, 7, world=1, local=8)
    assert torch.equal(single[0::2], n0) and torch.equal(single[1::2], n1)  # the union is the 1-process noise
