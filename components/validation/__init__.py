"""Data gates: great-expectations suites over processed slices and volumes."""
