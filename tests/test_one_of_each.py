"""Each concept has one implementation, and callers that used to have their own copies now agree exactly."""
from __future__ import annotations

import torch

from scorelab.data import two_modes
from scorelab.sde import VPSDE


def test_sampling_and_decoding_integrate_the_flow_with_one_engine():
    """The ODE sampler and the decoder of interpolation are the same integration (scorelab.ops.flow.integrate):
    from the same latents, with the same solver and tolerances, they land on the same points."""
    from scorelab.sampling import ODESampler
    from scorelab.tasks.conditional import decode, encode

    sde, mixture = VPSDE(), two_modes()
    score = mixture.oracle(sde)
    z = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for method, steps in (("rk4", 40), ("dopri5", 0)):
        sampled, _ = ODESampler(method, steps=max(steps, 1), eps=1e-3, rtol=1e-6, atol=1e-6)(
            score, sde, x_init=z.clone(), dtype=torch.float64)
        if method == "rk4":  # the sampler's default uniform grid is the decoder's linspace from T to eps
            decoded, _ = decode(score, sde, z.clone(), eps=1e-3, method=method, steps=steps)
        else:
            decoded, _ = decode(score, sde, z.clone(), eps=1e-3, method=method, rtol=1e-6, atol=1e-6)
        # the same engine; rk4's two grids (the sampler's TimeGrid, the decoder's linspace) differ by an ulp or two
        torch.testing.assert_close(sampled, decoded, rtol=0, atol=0 if method == "dopri5" else 1e-12)
    back, _ = encode(score, sde, decoded, eps=1e-3, method="dopri5", rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(back, z, rtol=0, atol=1e-3)


def test_the_same_seed_range_draws_the_same_samples_in_training_callbacks_and_in_sample_py(tmp_path):
    """The sample-grid and toy-metrics callbacks draw seed + i for sample i, as sample.py does (they used a sharded
    generator of one seed, and the same seed gave other samples)."""
    import numpy as np
    from hydra.utils import instantiate

    from scorelab.cli.runs import restore_run
    from scorelab.cli.sample import sample
    from scorelab.lit.callbacks import draw_finite

    from .platform_utils import ROOT, make_cfg

    ckpt = ROOT / "tests" / "fixtures" / "runs" / "toy.ckpt"
    cfg = make_cfg(tmp_path, [f"ckpt_path={ckpt}", "seed=5", "n_samples=32", "batch_size=32"], config_name="sample")
    from_sample_py = np.load(sample(cfg))["x"]
    run = restore_run(str(ckpt), cfg)
    module = run.module
    from_callback, _ = draw_finite(module, instantiate(run.sampler_cfg), range(5, 5 + 32), shape=(2,))
    np.testing.assert_array_equal(from_callback.numpy(), from_sample_py)


def test_the_ddpm_loss_and_the_hybrid_loss_query_one_chain_at_the_same_times():
    """Step i of the DDPM chain is one SDE time for L_simple, the hybrid objective and the bound
    (DDPMChain.sde_times): the DDPM loss used (i + 1) / N, which agrees with it for the linear chain only as N grows."""
    from scorelab.objectives import DDPMLoss, HybridLoss
    from scorelab.objectives.vlb import chain_times

    sde = VPSDE()
    x0 = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seen = {}

    class Recorder(torch.nn.Module):
        learn_variance = True

        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x, t, return_variance=False):
            seen[self.name] = t.clone()
            return (-x, torch.zeros_like(x)) if return_variance else -x

    DDPMLoss(sde, num_steps=1000).per_example(Recorder("ddpm"), x0, torch.Generator().manual_seed(0))
    HybridLoss(sde, num_steps=1000).terms(Recorder("hybrid"), x0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen["ddpm"], seen["hybrid"], rtol=0, atol=0)
    times = chain_times(sde, sde.ddpm_alphas_cumprod(1000)).float()
    assert all(bool((times - t).abs().min() == 0) for t in seen["ddpm"])  # each one is a chain time
    assert not torch.allclose(times, torch.arange(1, 1001) / 1000.0, rtol=0, atol=1e-4)  # not (i + 1) / N


def test_the_likelihood_callback_and_likelihood_py_give_an_example_the_same_value(tmp_path):
    """One NLL of a batch (metrics.likelihood.batch_nll), seeded per (seed, repeat, example): the callback's value of
    validation example i is likelihood.py's repeat-0 value of the same example (they were seeded differently)."""
    import types

    import numpy as np

    from scorelab.cli.likelihood import likelihood
    from scorelab.cli.sample import load_trained
    from scorelab.lit.likelihood_callback import LikelihoodCallback

    from .platform_utils import ROOT, make_cfg

    ckpt = ROOT / "tests" / "fixtures" / "runs" / "toy.ckpt"
    cfg = make_cfg(tmp_path, [f"ckpt_path={ckpt}", "split=val", "n=6", "batch_size=3", "seed=4", "rtol=1e-4",
                              "atol=1e-4"], config_name="likelihood")
    likelihood(cfg)
    by_command = np.load(tmp_path / "run" / "likelihood_values.npz")["values"][:, 0]

    trained = load_trained(str(ckpt), cfg=cfg)
    trained.datamodule.setup("fit")
    x = trained.datamodule.val_set.tensors[0][:6]
    callback = LikelihoodCallback(n=6, batch_size=3, rtol=1e-4, atol=1e-4, seed=4)
    module = types.SimpleNamespace(sde=trained.sde, device="cpu")
    trainer = types.SimpleNamespace(datamodule=trained.datamodule, global_step=0)
    # the same batches as the command (an adaptive solver's steps depend on the batch it solves together)
    by_callback = [v for i in (0, 3) for v in callback._solve(trained.score.eval(), module, x[i:i + 3],
                                                              [i, i + 1, i + 2], False, trainer)]
    np.testing.assert_allclose(by_callback, by_command, rtol=0, atol=1e-9)


def test_training_and_both_guidances_bind_labels_the_same_way():
    """One label binding (scorelab.guidance.labels): the training wrapper, classifier-free guidance at scale 1 and the
    conditional oracle called directly give the same scores, and refuse a label count that is not the batch's alike."""
    import pytest

    from scorelab.guidance.classifier import ClassifierGuidance, OracleClassifier
    from scorelab.guidance.free import ClassifierFreeGuidance
    from scorelab.guidance.labels import BoundLabels

    sde, mixture = VPSDE(), two_modes()
    oracle = mixture.oracle(sde, conditional=True)
    x, y = mixture.sample(6, generator=torch.Generator().manual_seed(0), return_labels=True)
    t = torch.full((6,), 0.3)
    direct = oracle(x, t, y)
    torch.testing.assert_close(BoundLabels(oracle, y)(x, t), direct, rtol=0, atol=0)
    torch.testing.assert_close(ClassifierFreeGuidance(oracle, y, 1.0)(x, t), direct, rtol=0, atol=0)
    one = ClassifierFreeGuidance(oracle, 1, 1.0)(x, t)  # one int: every example
    torch.testing.assert_close(one, oracle(x, t, torch.ones(6, dtype=torch.long)), rtol=0, atol=0)
    # classifier guidance with the exact noisy classifier at scale 1 is Bayes' rule: the conditional score
    guided = ClassifierGuidance(mixture.oracle(sde), OracleClassifier(mixture, sde), y, 1.0)(x.double(), t.double())
    torch.testing.assert_close(guided, oracle(x.double(), t.double(), y), rtol=1e-6, atol=1e-6)
    for wrapper in (BoundLabels(oracle, y), ClassifierFreeGuidance(oracle, y, 2.0),
                    ClassifierGuidance(mixture.oracle(sde), OracleClassifier(mixture, sde), y)):
        with pytest.raises(ValueError, match="6 labels .* but the score was asked for 2 examples"):
            wrapper(x[:2], t[:2])


def test_every_shipped_sampler_and_objective_implements_its_contract():
    """conf/sampler and conf/loss name subclasses of the two contracts; the sampler says whether it can inpaint."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from scorelab.objectives import Objective
    from scorelab.sampling import ODESampler, Sampler

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base=None):
        for group, base in (("sampler", Sampler), ("loss", Objective)):
            names = sorted(p.stem for p in (conf / group).glob("*.yaml"))
            assert names
            for name in names:
                target = compose("train", overrides=[f"{group}={name}"])[group]["_target_"]
                assert issubclass(get_class(target), base), f"conf/{group}/{name}.yaml: {target} is no {base.__name__}"
    assert ODESampler("rk4").supports_inpainting and not ODESampler("dopri5").supports_inpainting


def test_every_shipped_task_is_a_class_that_owns_and_checks_its_options():
    """conf/task/<name>.yaml builds a scorelab.tasks.Task called <name>; a bad option is refused by the class itself,
    in one line naming task.<key>, and an option the class does not take is named with the ones it does."""
    from pathlib import Path

    import pytest
    from hydra import compose, initialize_config_dir

    from scorelab.cli.sample import build_task
    from scorelab.core.errors import UserError
    from scorelab.tasks import Task

    conf = Path(__file__).resolve().parents[1] / "conf"
    needs = {"labels": ["task.label=1"], "inpaint": ["task.image=0", "task.box=[0,0,1,1]"],
             "colorize": ["task.image=0"], "interpolate": ["task.image=[0,1]"]}
    with initialize_config_dir(str(conf), version_base=None):
        names = sorted(p.stem for p in (conf / "task").glob("*.yaml"))
        assert {"sample", "labels", "teach", "inpaint", "colorize", "interpolate"} <= set(names)
        for name in names:
            task = build_task(compose("sample", overrides=[f"task={name}", *needs.get(name, [])]))
            assert isinstance(task, Task) and task.name == name
        assert type(build_task(compose("sample"))).__name__ == "Sample"  # plain sampling is the default
        with pytest.raises(UserError, match=r"^task.per_image must be a positive integer, got 0$"):
            build_task(compose("sample", overrides=["task=colorize", "task.image=0", "task.per_image=0"]))
        with pytest.raises(UserError, match=r"^task.grid is not a setting of scorelab.tasks.Labels; its settings are "
                                            r"label, labels, per_class, guidance, classifier, classifier_scale$"):
            build_task(compose("sample", overrides=["task=labels", "task.label=1", "+task.grid=3"]))


def test_the_flow_engine_refuses_a_tuple_state_for_fixed_steps_in_one_clear_line():
    """A (state, log-density) pair is integrated by the adaptive solvers only; a fixed-step method says so instead of
    failing inside a step."""
    import pytest

    from scorelab.ops.flow import integrate

    x = torch.zeros(3, 2)
    times = torch.linspace(1.0, 0.0, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="a tuple state .* needs an adaptive method"):
        integrate(lambda s, t: s, (x, torch.zeros(3)), times, "euler")
    # a tensor state: Euler on dx/dt = x over t 1 -> 0 in 4 steps of -1/4 gives (3/4)^4 x
    out = integrate(lambda s, t: s, torch.ones(3, 2), times, "euler")
    torch.testing.assert_close(out, torch.full((3, 2), 0.75**4))
