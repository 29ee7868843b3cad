"""Drift statistics on score streams: pure numpy/scipy, no serving framework."""
