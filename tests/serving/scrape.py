"""Reading the endpoint's /metrics in tests."""

import requests


def metric(server: str, name: str) -> float:
    """The sum of every series whose line starts with ``name`` (a metric, or one labelled series)."""
    text = requests.get(f"{server}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))
