"""Brainomaly's library: pure functions and torch modules, free of Ray, MLflow and DVC."""
