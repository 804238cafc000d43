"""Benchmarks, run by ``make bench``; figures go to bench/RESULTS.md."""
