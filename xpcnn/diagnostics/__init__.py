"""Checks and pictures of a model: finite-difference gradients, CPU/GPU parity, plots."""
