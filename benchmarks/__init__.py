"""Benchmarks of ecgfm-serve: raw model, request decoding and the served API (see docs/performance.md)."""
