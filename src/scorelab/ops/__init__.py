"""Operators shared by the objectives, the samplers and the likelihood: the divergence of a vector field (exact or
Hutchinson's estimate) and the one probability-flow ODE engine."""
