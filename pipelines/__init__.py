"""The adapters that run components/ under DVC, Ray and MLflow: a module per stage of dvc.yaml
(phantoms, preprocess, validate, train, evaluate, sites, register), one per command outside it
(calibrate, compare, oneclass, score, tune), the CLI (cli.py, the one module that also sees
serving/), and what they share (params, tracking, the model and site stores, the MLflow pyfunc
model, the Ray cluster, workspaces, datasets, errors). Ray Train, Ray Tune and MLflow are used
here and in serving/ only."""
