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
