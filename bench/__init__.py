"""Benchmarks: programs that print RESULT lines, not tests (docs/architecture.md §8)."""
