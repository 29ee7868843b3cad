"""Volume -> slices: the one preprocessing path shared by training and serving."""
