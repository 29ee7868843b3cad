"""On-disk formats shared by every stage: NIfTI volumes, dataset layouts, processed slices."""
