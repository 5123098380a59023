"""Benchmark harness: ``python -m flashattn_py.bench`` (see README)."""
