"""Registered models' permissions for the Databricks stand-in: the workspace registry's
permissions API and Unity Catalog's grants API, in memory."""

from __future__ import annotations

import hashlib
import json
import threading
from urllib.parse import parse_qs, unquote

import requests


class RegistryPermissions:
    """Registered models' permissions, in memory: the workspace registry's permissions API (an ACL
    per model id, each principal holding one level directly; the `admins` group holds CAN_MANAGE
    by inheritance) and Unity Catalog's grants API (privileges per principal on a FUNCTION
    securable). A model exists when the upstream server has it. Principals named in `unknown` do
    not exist: a request naming one fails whole, as Databricks answers (by public reports; not
    checked against a workspace). `writes` lists every PATCH and PUT."""

    PREFIXES = (
        "/api/2.0/mlflow/databricks/registered-models/get",
        "/api/2.0/permissions/registered-models/",
        "/api/2.1/unity-catalog/permissions/",
    )
    FIELDS = ("user_name", "group_name", "service_principal_name")
    LEVELS = (
        "CAN_READ",
        "CAN_EDIT",
        "CAN_MANAGE_STAGING_VERSIONS",
        "CAN_MANAGE_PRODUCTION_VERSIONS",
        "CAN_MANAGE",
    )
    FUNCTION_PRIVILEGES = ("EXECUTE", "APPLY_TAG", "MANAGE", "ALL_PRIVILEGES")

    def __init__(self, upstream: str, owner: tuple[str, str]):
        self.upstream = upstream
        self.owner = owner  # (ACL field, name) of the caller, who creates the models
        self.unknown: set[str] = set()
        self.acls: dict[
            str, dict[tuple[str, str], str]
        ] = {}  # model id -> {(field, principal): level}
        self.grants: dict[str, dict[str, set[str]]] = {}  # UC full name -> {principal: privileges}
        self.writes: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @staticmethod
    def model_id(name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()[:32]

    def acl(self, name: str) -> dict[tuple[str, str], str]:
        """The direct ACL of workspace model `name` (for a test to read or prepare)."""
        return self.acls.setdefault(self.model_id(name), {self.owner: "CAN_MANAGE"})

    def uc_grants(self, full_name: str) -> dict[str, set[str]]:
        return self.grants.setdefault(full_name, {})

    def _exists(self, name: str) -> bool:
        return requests.get(
            f"{self.upstream}/api/2.0/mlflow/registered-models/get",
            params={"name": name},
            timeout=30,
        ).ok

    def serve(self, method: str, path: str, query: str, body: bytes) -> tuple[int, dict]:
        request = json.loads(body or b"{}")
        with self._lock:
            if method in ("PATCH", "PUT"):
                self.writes.append((method, path))
            if path.startswith("/api/2.0/mlflow/databricks/"):
                name = parse_qs(query).get("name", [""])[0]
                if not self._exists(name):
                    return 404, {
                        "error_code": "RESOURCE_DOES_NOT_EXIST",
                        "message": f"Model '{name}' does not exist.",
                    }
                self.acl(name)
                return 200, {
                    "registered_model_databricks": {
                        "id": self.model_id(name),
                        "name": name,
                        "permission_level": "CAN_MANAGE",
                    }
                }
            if path.startswith("/api/2.0/permissions/"):
                return self._workspace(method, path.rpartition("/")[2], request)
            securable, _, full_name = unquote(
                path.removeprefix("/api/2.1/unity-catalog/permissions/")
            ).partition("/")
            return self._unity_catalog(method, securable, full_name, request)

    def _workspace(self, method: str, model_id: str, request: dict) -> tuple[int, dict]:
        acl = self.acls.get(model_id)
        if acl is None:
            return 404, {
                "error_code": "RESOURCE_DOES_NOT_EXIST",
                "message": f"Registered model {model_id} does not exist.",
            }
        if method in ("PATCH", "PUT"):
            entries = {}
            for entry in request.get("access_control_list", []):
                (field,) = [f for f in self.FIELDS if entry.get(f)]
                if entry[field] in self.unknown:
                    label = {
                        "user_name": "UserName",
                        "group_name": "GroupName",
                        "service_principal_name": "ServicePrincipalName",
                    }[field]
                    return 400, {
                        "error_code": "INVALID_PARAMETER_VALUE",
                        "message": f"Principal: {label}({entry[field]}) does not exist",
                    }
                if entry.get("permission_level") not in self.LEVELS:
                    return 400, {
                        "error_code": "INVALID_PARAMETER_VALUE",
                        "message": (
                            f"Permission {entry.get('permission_level')} "
                            "is not valid for registered models"
                        ),
                    }
                entries[(field, entry[field])] = entry["permission_level"]
            if method == "PUT":
                acl.clear()
            acl.update(entries)
        listed = [
            {field: principal, "all_permissions": [{"permission_level": level, "inherited": False}]}
            for (field, principal), level in sorted(acl.items())
        ]
        listed.append(
            {
                "group_name": "admins",
                "all_permissions": [
                    {
                        "permission_level": "CAN_MANAGE",
                        "inherited": True,
                        "inherited_from_object": ["/registered-models/"],
                    }
                ],
            }
        )
        return 200, {
            "object_id": f"/registered-models/{model_id}",
            "object_type": "registered-model",
            "access_control_list": listed,
        }

    def _unity_catalog(
        self, method: str, securable: str, full_name: str, request: dict
    ) -> tuple[int, dict]:
        if securable.upper() != "FUNCTION" or not self._exists(full_name):
            return 404, {
                "error_code": "RESOURCE_DOES_NOT_EXIST",
                "message": (
                    f"{securable} '{full_name}' does not exist (a registered model is a FUNCTION)."
                ),
            }
        grants = self.uc_grants(full_name)
        if method == "PATCH":
            changes = request.get("changes", [])
            for change in changes:
                if change.get("principal") in self.unknown:
                    return 400, {
                        "error_code": "PRINCIPAL_DOES_NOT_EXIST",
                        "message": f"Could not find principal with name {change['principal']}",
                    }
                stray = set(change.get("add", []) + change.get("remove", [])) - set(
                    self.FUNCTION_PRIVILEGES
                )
                if stray:
                    return 400, {
                        "error_code": "INVALID_PARAMETER_VALUE",
                        "message": f"Privilege {min(stray)} is not applicable to this entity",
                    }
            for change in changes:
                held = grants.setdefault(change["principal"], set())
                held.update(change.get("add", []))
                held.difference_update(change.get("remove", []))
        return 200, {
            "privilege_assignments": [
                {"principal": principal, "privileges": sorted(held)}
                for principal, held in sorted(grants.items())
                if held
            ]
        }
