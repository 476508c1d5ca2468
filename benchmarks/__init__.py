"""Benchmarks and the fault campaign: developer tools, not shipped in the wheel (run by ``make bench``)."""
