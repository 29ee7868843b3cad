"""The papers' evaluation protocols as plain numpy / scikit-learn functions."""
