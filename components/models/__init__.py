"""Detectors: one file per family; ``registry.build_detector`` maps params names to classes."""
