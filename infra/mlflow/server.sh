#!/usr/bin/env bash
# A shared MLflow tracking server and registry for a team or a cluster, backed by the same
# SQLite store the pipeline writes by default. Point the pipeline at it with
#   export MLFLOW_TRACKING_URI=http://<host>:5000
# For production, swap the SQLite URI for PostgreSQL/MySQL and the artifact root for S3/GCS.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec mlflow server \
  --backend-store-uri "${BACKEND_STORE_URI:-sqlite:///mlflow.db}" \
  --artifacts-destination "${ARTIFACTS_DESTINATION:-./mlartifacts}" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}"
