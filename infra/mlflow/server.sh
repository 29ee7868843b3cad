#!/usr/bin/env bash
# A shared MLflow tracking server and registry for a team or a cluster, backed by the same
# SQLite store the pipeline writes by default, with MLflow's basic-auth app: every request needs
# a user and password, and a new user may touch no experiment or model until granted
# (default_permission NO_PERMISSIONS). Needs `pip install "mlflow[auth]"` and an admin password:
#   MLFLOW_ADMIN_PASSWORD=... infra/mlflow/server.sh
# Clients point the pipeline at it with
#   export MLFLOW_TRACKING_URI=http://<host>:5000 MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=...
# Put TLS in front of it (a reverse proxy) off a trusted network: basic auth sends the password
# in every request. For production, swap the SQLite URIs for PostgreSQL/MySQL and the artifact
# root for S3/GCS.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MLFLOW_ADMIN_PASSWORD:?set MLFLOW_ADMIN_PASSWORD: the server starts with authentication on}"
python -c "import flask_wtf" 2>/dev/null || { echo 'the auth app needs: pip install "mlflow[auth]"' >&2; exit 1; }
config="$(mktemp)"
trap 'rm -f "$config"' EXIT
cat > "$config" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = ${AUTH_DATABASE_URI:-sqlite:///mlflow-auth.db}
admin_username = ${MLFLOW_ADMIN_USERNAME:-admin}
admin_password = ${MLFLOW_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
MLFLOW_AUTH_CONFIG_PATH="$config" mlflow server --app-name basic-auth \
  --backend-store-uri "${BACKEND_STORE_URI:-sqlite:///mlflow.db}" \
  --artifacts-destination "${ARTIFACTS_DESTINATION:-./mlartifacts}" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}"
