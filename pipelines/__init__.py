"""One module per DVC stage. Ray Train, Ray Tune and MLflow are used here and in serving/ only."""
