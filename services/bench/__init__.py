"""Benchmarks of the whole pipeline (`riskmesh bench`)."""
