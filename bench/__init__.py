"""Benchmarks: programs that print RESULT lines, not tests (DESIGN.md §9)."""
