"""Offline evaluation, latency benchmarks and plots."""
