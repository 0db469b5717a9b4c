"""Chaos runs: faults under load, then a checker of the invariants they must keep."""
