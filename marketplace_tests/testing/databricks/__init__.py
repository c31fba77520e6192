"""A stand-in of Databricks' REST front door, for tests: the server core (`server`: OAuth,
bearer checks, the model-version artifact API, forwarding to a real `mlflow server`) and one module
per API surface it serves beyond MLflow's (`jobs`: Jobs, Files and secrets; `permissions`: registry
permissions and Unity Catalog grants; `webhooks`: registry webhooks and their deliveries)."""

from .jobs import JobRunner
from .permissions import RegistryPermissions
from .server import ARTIFACT_ENDPOINTS, TOKEN_OWNER, DatabricksStandIn
from .webhooks import RegistryWebhooks

__all__ = [
    "ARTIFACT_ENDPOINTS",
    "TOKEN_OWNER",
    "DatabricksStandIn",
    "JobRunner",
    "RegistryPermissions",
    "RegistryWebhooks",
]
