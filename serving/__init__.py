"""Ray Serve application: HTTP ingress, model loading from the MLflow registry, Prometheus metrics."""
