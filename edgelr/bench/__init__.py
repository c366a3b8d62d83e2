"""Benchmark orchestration, benchmark-tool output parsing and the long results frame."""
