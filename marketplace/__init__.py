"""A curated MLflow model marketplace fed from many workspaces, orchestrated as Dagster assets."""

import os
from pathlib import Path

# Read by mlflow-export-import when it is first imported; a user's own setting wins.
os.environ.setdefault(
    "MLFLOW_EXPORT_IMPORT_LOG_CONFIG_FILE",
    str(Path(__file__).with_name("export_import_logging.yaml")),
)
