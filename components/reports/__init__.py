"""Figures and tables of evaluation results (matplotlib, pandas; no tracking or pipeline code)."""
