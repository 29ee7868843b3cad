"""Scans from a hospital's PACS: follow it, score each new brain MR series, store the result back."""
