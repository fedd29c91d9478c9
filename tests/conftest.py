"""Test configuration: float64 everywhere so exact comparisons can be tight, and two host
devices are not needed (chains are vectorised on one device)."""

import jax

jax.config.update("jax_enable_x64", True)
