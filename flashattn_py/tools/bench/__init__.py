"""Benchmark harness: ``python -m flashattn_py.tools.bench`` (see README)."""
