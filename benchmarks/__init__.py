"""Benchmarks of bayesmeta against the same models hand-written in NumPyro and in peers."""
