"""Pure scoring: (input, reconstruction, brain mask) -> anomaly maps and scores."""
