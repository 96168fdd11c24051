"""Benchmarks against real baselines (see the README's performance section)."""
