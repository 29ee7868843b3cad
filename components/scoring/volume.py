"""From slice scores to a verdict on the whole scan."""

from __future__ import annotations

import numpy as np


def volume_score(scores: np.ndarray) -> float:
    """A volume's score is its most anomalous slice's: one lesion is enough to flag a scan."""
    return float(np.max(scores)) if len(scores) else 0.0
