"""Access grants on marketplace models, applied: the configured permissions made on every
registration and only the sync's own ever taken away, through the registries' own permission
APIs: an OSS MLflow server started with `--app-name basic-auth` (users and roles), the
Databricks workspace registry (its permissions API) and Unity Catalog (its grants API).

Which grants to make and which to revoke is `grant_plan.plan`, a plain function.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from marketplace.config import PERMISSIONS, MarketplaceRegistryConfig
from marketplace.credentials import authenticate
from marketplace.errors import MarketplaceError
from marketplace.grant_plan import (
    TAG_GRANTS,
    Grant,
    Holder,
    plan,
    record_value,
    recorded_grants,
    wanted_grants,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


class GrantError(MarketplaceError):
    """A configured grant the registry cannot hold on a model: its principal does not exist."""


def _record(
    client: MlflowClient, name: str, model_tags: Mapping[str, str], grants: frozenset[Grant]
) -> None:
    """Write the model's `marketplace.grants` tag, only when it changes."""
    value = record_value(grants)
    if value == model_tags.get(TAG_GRANTS, record_value(())):
        return
    if grants:
        client.set_registered_model_tag(name, TAG_GRANTS, value)
    else:
        client.delete_registered_model_tag(name, TAG_GRANTS)


class _Missing(Exception):
    """The grant's principal does not exist in the registry."""


class Access(Protocol):
    """One registry's permissions on one model, for the length of one apply."""

    def existing(self, name: str, holders: set[Holder]) -> dict[Holder, set[str]]: ...

    def grant(self, name: str, grant: Grant) -> None: ...

    def revoke(self, name: str, grant: Grant) -> None: ...


class Grants:
    """The configured grants of the marketplace registry, applied model by model (from several
    threads at once: each apply reads the registry afresh). `workspace_client`, for a Databricks
    marketplace: a databricks-sdk WorkspaceClient, or a function making one (called once, when
    first needed); without it, one is made from the marketplace's `databricks` block."""

    def __init__(
        self, settings: MarketplaceRegistryConfig, tracking_uri: str, workspace_client=None
    ):
        self.settings = settings
        self.tracking_uri = tracking_uri
        self._workspace_client = workspace_client
        self._app_client = None
        self._lock = threading.Lock()

    def wanted(self, name: str) -> list[Grant]:
        return wanted_grants(self.settings.grants, PERMISSIONS[self.settings.kind], name)

    def apply(self, client: MlflowClient, name: str, model_tags: Mapping[str, str]) -> int:
        """Make the registry hold every wanted grant on model `name` and revoke the sync's own that
        are no longer configured; the number of permissions granted or revoked. Raises GrantError
        naming each principal that does not exist, after making the other changes."""
        wanted = self.wanted(name)
        recorded = recorded_grants(model_tags)
        if not wanted and not recorded:
            return 0
        access = self._access()
        holders = {g.holder for g in wanted} | {g.holder for g in recorded}
        steps = plan(wanted, recorded, access.existing(name, holders))
        revoked, granted, missing = [], [], []
        try:
            for grant in steps.revoke:
                access.revoke(name, grant)
                revoked.append(grant)
            for grant in steps.grant:
                try:
                    access.grant(name, grant)
                    granted.append(grant)
                except _Missing:
                    missing.append(grant)
        finally:
            # What was done is recorded even when a call fails halfway: a grant made but not
            # recorded would never be the sync's to revoke.
            done = (
                (steps.record - set(steps.grant))
                | set(granted)
                | (set(steps.revoke) - set(revoked))
            )
            _record(client, name, model_tags, done)
        if missing:
            where = {
                "mlflow": "the marketplace's MLflow server",
                "databricks": "the Databricks workspace",
                "unity_catalog": "Unity Catalog",
            }[self.settings.kind]
            raise GrantError(
                f"marketplace model {name!r}: marketplace.grants: "
                + "; ".join(
                    f"{g.kind.replace('_', ' ')} {g.principal!r} does not exist in {where} "
                    f"(granting {g.permission})"
                    for g in missing
                )
            )
        return len(revoked) + len(granted)

    def _access(self) -> Access:
        kind = self.settings.kind
        if kind == "mlflow":
            return MlflowAccess(self._auth_client())
        if kind == "databricks":
            return WorkspaceAccess(self._databricks())
        return UnityCatalogAccess(self._databricks())

    def _auth_client(self):
        with self._lock:
            if self._app_client is None:
                # The client sends through MLflow's request auth, as the marketplace's MlflowClient
                # does: the credentials go to the marketplace's origin only.
                authenticate(
                    self.tracking_uri,
                    username_env=self.settings.username_env,
                    password_env=self.settings.password_env,
                    token_env=self.settings.token_env,
                )
                from mlflow.server import get_app_client

                self._app_client = get_app_client("basic-auth", tracking_uri=self.tracking_uri)
            return self._app_client

    def _databricks(self):
        with self._lock:
            if callable(self._workspace_client):
                self._workspace_client = self._workspace_client()
            if self._workspace_client is None:
                from databricks.sdk import WorkspaceClient

                from marketplace.databricks import ensure_profile, profile_of

                ensure_profile("the marketplace", self.tracking_uri, self.settings.databricks)
                self._workspace_client = WorkspaceClient(profile=profile_of(self.tracking_uri))
            return self._workspace_client


REGISTERED_MODEL = "registered_model"


class MlflowAccess:
    """An OSS MLflow server's basic-auth permissions. A user's own grants live in MLflow's
    per-user role `__user_<id>__` (3.17; `get_user_permission` answers the effective permission,
    roles and default included, so it cannot tell a direct grant); a role's, in the role."""

    def __init__(self, auth):
        self._auth = auth
        self._roles = None
        self._role_permission_ids: dict[Holder, int] = {}

    def _all_roles(self):
        if self._roles is None:
            from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME

            self._roles = [
                r
                for r in self._call(self._auth.list_all_roles)
                if r.workspace == DEFAULT_WORKSPACE_NAME
            ]
        return self._roles

    def _role(self, holder: Holder):
        kind, principal = holder
        if kind == "role":
            wanted = principal
        else:
            user = self._user(principal)
            if user is None:
                return None
            wanted = f"__user_{user.id}__"
        return next((r for r in self._all_roles() if r.name == wanted), None)

    def _user(self, username: str):
        from mlflow.exceptions import RestException

        try:
            return self._call(self._auth.get_user, username)
        except RestException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def existing(self, name: str, holders: set[Holder]) -> dict[Holder, set[str]]:
        found: dict[Holder, set[str]] = {}
        for holder in holders:
            role = self._role(holder)
            for permission in role.permissions if role is not None else ():
                if (
                    permission.resource_type == REGISTERED_MODEL
                    and permission.resource_pattern == name
                ):
                    found[holder] = {permission.permission}
                    self._role_permission_ids[holder] = permission.id
        return found

    def grant(self, name: str, grant: Grant) -> None:
        from mlflow.exceptions import RestException

        if grant.kind == "user":
            try:
                self._call(
                    self._auth.grant_user_permission,
                    grant.principal,
                    REGISTERED_MODEL,
                    name,
                    grant.permission,
                )
            except RestException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    raise _Missing() from None
                raise
            return
        role = self._role(grant.holder)
        if role is None:
            raise _Missing()
        self._call(
            self._auth.add_role_permission, role.id, REGISTERED_MODEL, name, grant.permission
        )

    def revoke(self, name: str, grant: Grant) -> None:
        if grant.kind == "user":
            self._call(self._auth.revoke_user_permission, grant.principal, REGISTERED_MODEL, name)
        else:
            self._call(self._auth.remove_role_permission, self._role_permission_ids[grant.holder])

    @staticmethod
    def _call(method, *args):
        from mlflow.exceptions import RestException

        try:
            return method(*args)
        except RestException as exc:
            if exc.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
                raise MarketplaceError(
                    "marketplace.grants: the marketplace's MLflow user may not manage permissions "
                    "(it needs to be an admin of its server, marketplace.username_env): "
                    f"{exc.message}"
                ) from None
            raise


# The workspace registry's permission levels for the marketplace's permissions.
WORKSPACE_LEVELS = {"READ": "CAN_READ", "EDIT": "CAN_EDIT", "MANAGE": "CAN_MANAGE"}
WORKSPACE_OBJECT = "registered-models"
_ACL_FIELDS = {
    "user": "user_name",
    "group": "group_name",
    "service_principal": "service_principal_name",
}
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MISSING_PRINCIPAL = re.compile(r"(?i)could not find principal|principal\b.*\bdoes not exist")


def _missing_principal(exc: Exception) -> bool:
    """Databricks' answer for a principal it does not know (matched on its code or message)."""
    return getattr(exc, "error_code", None) == "PRINCIPAL_DOES_NOT_EXIST" or bool(
        _MISSING_PRINCIPAL.search(str(exc))
    )


class WorkspaceAccess:
    """The Databricks workspace registry's permissions API on registered models."""

    def __init__(self, workspace_client):
        self._w = workspace_client
        self._ids: dict[str, str] = {}

    def _id(self, name: str) -> str:
        if name not in self._ids:
            model_id = self._w.model_registry.get_model(name).registered_model_databricks.id
            if not _ID.fullmatch(str(model_id or "")):
                raise MarketplaceError(
                    f"marketplace model {name!r}: the workspace answered no usable id "
                    f"({model_id!r})"
                )
            self._ids[name] = model_id
        return self._ids[name]

    def _direct(self, name: str) -> list[tuple[Holder, str]]:
        """Every (principal, level) the model's ACL holds directly (not inherited)."""
        acl = self._w.permissions.get(WORKSPACE_OBJECT, self._id(name)).access_control_list or []
        pairs = []
        for entry in acl:
            kind = next(
                (k for k, field in _ACL_FIELDS.items() if getattr(entry, field, None)), None
            )
            if kind is None:
                continue
            holder = (kind, getattr(entry, _ACL_FIELDS[kind]))
            pairs += [
                (holder, p.permission_level.value)
                for p in entry.all_permissions or []
                if not p.inherited and p.permission_level is not None
            ]
        return pairs

    def existing(self, name: str, holders: set[Holder]) -> dict[Holder, set[str]]:
        marketplace = {level: permission for permission, level in WORKSPACE_LEVELS.items()}
        found: dict[Holder, set[str]] = {}
        for holder, level in self._direct(name):
            if holder in holders:
                found.setdefault(holder, set()).add(marketplace.get(level, level))
        return found

    def grant(self, name: str, grant: Grant) -> None:
        from databricks.sdk.errors import DatabricksError

        try:
            self._w.permissions.update(
                WORKSPACE_OBJECT,
                self._id(name),
                access_control_list=[_request(grant.holder, WORKSPACE_LEVELS[grant.permission])],
            )
        except DatabricksError as exc:
            if _missing_principal(exc):
                raise _Missing() from None
            raise

    def revoke(self, name: str, grant: Grant) -> None:
        # `update` only adds or raises a level; the ACL without this entry is set whole, read just
        # before.
        level = WORKSPACE_LEVELS[grant.permission]
        remaining = [
            _request(holder, held)
            for holder, held in self._direct(name)
            if (holder, held) != (grant.holder, level)
        ]
        self._w.permissions.set(WORKSPACE_OBJECT, self._id(name), access_control_list=remaining)


def _request(holder: Holder, level: str):
    from databricks.sdk.service.iam import AccessControlRequest, PermissionLevel

    kind, principal = holder
    return AccessControlRequest(
        permission_level=PermissionLevel(level), **{_ACL_FIELDS[kind]: principal}
    )


# Unity Catalog's grants API takes a registered model as a FUNCTION securable.
UC_SECURABLE = "FUNCTION"
UC_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}\.[A-Za-z0-9_-]{1,255}\.[A-Za-z0-9_-]{1,255}$")
# Privileges that already give a principal what EXECUTE would.
UC_HOLDING = {"EXECUTE", "ALL_PRIVILEGES"}


class UnityCatalogAccess:
    """Unity Catalog's grants API on a registered model: EXECUTE, by principal name (a user's
    e-mail, a group's name, a service principal's application id)."""

    def __init__(self, workspace_client):
        self._w = workspace_client

    @staticmethod
    def _full_name(name: str) -> str:
        # The SDK puts the name into the request path: only a catalog.schema.model name goes there.
        if not UC_NAME.fullmatch(name):
            raise MarketplaceError(
                f"marketplace model {name!r} is not a Unity Catalog name (catalog.schema.model)"
            )
        return name

    def existing(self, name: str, holders: set[Holder]) -> dict[Holder, set[str]]:
        assignments = (
            self._w.grants.get(UC_SECURABLE, self._full_name(name)).privilege_assignments or []
        )
        held = {
            a.principal: {p.value for p in a.privileges or []} & UC_HOLDING for a in assignments
        }
        return {holder: held[holder[1]] for holder in holders if held.get(holder[1])}

    def grant(self, name: str, grant: Grant) -> None:
        self._change(name, grant, add=True)

    def revoke(self, name: str, grant: Grant) -> None:
        self._change(name, grant, add=False)

    def _change(self, name: str, grant: Grant, *, add: bool) -> None:
        from databricks.sdk.errors import DatabricksError
        from databricks.sdk.service.catalog import PermissionsChange, Privilege

        privilege = [Privilege(grant.permission)]
        change = PermissionsChange(
            principal=grant.principal, **({"add": privilege} if add else {"remove": privilege})
        )
        try:
            self._w.grants.update(UC_SECURABLE, self._full_name(name), changes=[change])
        except DatabricksError as exc:
            if add and _missing_principal(exc):
                raise _Missing() from None
            raise
