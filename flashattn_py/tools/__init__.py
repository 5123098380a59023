"""Maintainer tools run with `python -m flashattn_py.tools.<name>` from a source checkout (build_wheels)."""
