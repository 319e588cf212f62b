"""Conditional tasks of an unconditional model: inpainting, colourisation and interpolation through the
probability-flow ODE (Song et al. 2021, App. I.2, I.3 and Sec. 4.3)."""
