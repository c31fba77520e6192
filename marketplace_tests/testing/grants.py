"""Access grants tests' shared pieces: a marketplace configuration with grants, a grant as the
configuration writes it, and a registered model's tags."""

from __future__ import annotations

from mlflow import MlflowClient

from marketplace.config import parse_config
from marketplace_tests.testing.deployments import UNUSED_URI

WORKSPACES = [{"name": "dev01", "tracking_uri": UNUSED_URI, "production": {"stage": "Production"}}]
ROLE = "fraud-analysts"


def grants_config(grants: list[dict], **marketplace):
    raw = {
        "external_storage": {"uri": "x"},
        "workspaces": WORKSPACES,
        "marketplace": {"tracking_uri": UNUSED_URI, "grants": grants, **marketplace},
    }
    return parse_config(raw, "marketplace.yaml")


def grant(principal: str, kind: str, permission: str, *models: str) -> dict:
    return {
        "principal": principal,
        "kind": kind,
        "permission": permission,
        "models": list(models) or ["*"],
    }


def model_tags(client: MlflowClient, name: str) -> dict:
    return client.get_registered_model(name).tags
