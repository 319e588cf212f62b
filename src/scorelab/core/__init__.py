"""The core: errors, safe files and atomic writes, process groups, shape helpers and position-seeded randomness.

Everything above imports it; it imports nothing of scorelab's.
"""
