"""The marketplace's registry webhook on a Databricks workspace: one registry-wide HTTP webhook,
created or brought up to date through Databricks' own registry-webhooks API.

Databricks webhooks have no name, so the description marks the marketplace's: it starts with
`marketplace-sync`. A webhook that calls the receiver's URL counts as ours too, so that one made
by hand (`webhook.manage: false`) with another description is still found. Unity Catalog has no
registry webhooks: such a workspace is reported, and keeps being polled.
"""

from __future__ import annotations

import re

from marketplace.databricks import ensure_profile, profile_of, registry_uris
from marketplace.webhooks import DATABRICKS_EVENTS, WEBHOOK_NAME, WebhookState

DESCRIPTION = (
    f"{WEBHOOK_NAME}: the model marketplace's sync; a change here is synced within seconds."
)
UNITY_CATALOG = (
    "Unity Catalog has no registry webhooks (Databricks offers them on the workspace registry "
    "only): this workspace is polled"
)
_MARKED = re.compile(rf"^{re.escape(WEBHOOK_NAME)}(?=$|[\s:])")


def _registry(workspace):
    """The workspace's model registry API, as its own service principal (credentials from the
    environment, through the run's private profile file)."""
    from databricks.sdk import WorkspaceClient

    tracking_uri, _ = registry_uris(workspace)
    ensure_profile(f"workspace {workspace.name}", tracking_uri, workspace.databricks)
    return WorkspaceClient(profile=profile_of(tracking_uri)).model_registry


def _url(hook) -> str | None:
    return hook.http_url_spec.url if hook.http_url_spec else None


def _marked(hook) -> bool:
    return bool(_MARKED.match(hook.description or ""))


def _ours(hook, url: str) -> bool:
    return _marked(hook) or (_url(hook) or "").rstrip("/") == url.rstrip("/")


def _replaceable(hook) -> bool:
    """An update changes neither a webhook's scope nor its kind: only a registry-wide HTTP one is
    kept."""
    return hook.model_name is None and hook.http_url_spec is not None and hook.job_spec is None


def _problems(hook, url: str) -> list[str]:
    problems = []
    if hook.http_url_spec is None:
        problems.append("it runs a job instead of calling the receiver")
    elif (_url(hook) or "").rstrip("/") != url.rstrip("/"):
        problems.append(f"it calls {_url(hook)}, not {url}")
    if hook.model_name is not None:
        problems.append(f"it hears model {hook.model_name} only, not the whole registry")
    events = {event.value for event in hook.events or []}
    if missing := [event for event in DATABRICKS_EVENTS if event not in events]:
        problems.append("it misses " + ", ".join(missing))
    status = hook.status.value if hook.status is not None else "ACTIVE"  # Databricks' default
    if status != "ACTIVE":
        problems.append(f"it is {status}")
    return problems


def _failed(workspace: str, exc: Exception, secret: str | None = None) -> WebhookState:
    from databricks.sdk.errors import PermissionDenied

    from marketplace.registry import redact_text

    text = redact_text(str(exc))
    if secret:
        text = text.replace(secret, "***")
    detail = f"{type(exc).__name__}: {text[:300]}"
    if isinstance(exc, PermissionDenied):
        detail += (
            " (a registry-wide webhook needs a workspace admin: grant it, or set webhook.manage: "
            "false and create the webhook by hand, docs/databricks.md)"
        )
    return WebhookState(workspace, "failed", detail=detail)


def ensure_databricks_webhook(workspace, url: str, secret: str) -> WebhookState:
    """Create the workspace's marketplace webhook, or bring it to `url`, our events, ACTIVE and the
    current secret (which Databricks never shows again, so it is always sent). Marked duplicates
    are deleted; so is a marked one that an update cannot turn registry-wide. Never raises."""
    from databricks.sdk.service.ml import HttpUrlSpec, RegistryWebhookEvent, RegistryWebhookStatus

    if workspace.databricks.unity_catalog:
        return WebhookState(workspace.name, "unsupported", detail=UNITY_CATALOG)
    try:
        registry = _registry(workspace)
        ours = [hook for hook in registry.list_webhooks() if _ours(hook, url)]
        keep = next((hook for hook in ours if _replaceable(hook)), None)
        for hook in ours:
            if hook is not keep and _marked(hook):  # two marketplaces' races, or one made per model
                registry.delete_webhook(hook.id)
        settings = {
            "events": [RegistryWebhookEvent(event) for event in DATABRICKS_EVENTS],
            "description": DESCRIPTION,
            "http_url_spec": HttpUrlSpec(url=url, secret=secret),
            "status": RegistryWebhookStatus.ACTIVE,
        }
        if keep is None:
            made = registry.create_webhook(**settings)
            return WebhookState(
                workspace.name, "created", made.webhook.id if made.webhook else None
            )
        registry.update_webhook(keep.id, **settings)
        return WebhookState(workspace.name, "updated", keep.id)
    except Exception as exc:  # noqa: BLE001 - one workspace's failure is reported; it keeps polling
        return _failed(workspace.name, exc, secret)


def inspect_databricks_webhook(workspace, url: str) -> WebhookState:
    """Read-only: does the workspace hold an active registry-wide webhook of ours that calls `url`
    with every event the sync needs? (Its secret cannot be read back, so it is not checked.)"""
    if workspace.databricks.unity_catalog:
        return WebhookState(workspace.name, "unsupported", detail=UNITY_CATALOG)
    try:
        ours = [hook for hook in _registry(workspace).list_webhooks() if _ours(hook, url)]
    except Exception as exc:  # noqa: BLE001 - reported by the check
        return _failed(workspace.name, exc)
    if not ours:
        return WebhookState(
            workspace.name,
            "missing",
            detail=f"no registry webhook described as {WEBHOOK_NAME} or calling {url}",
        )
    hook, problems = min(
        ((hook, _problems(hook, url)) for hook in ours), key=lambda found: len(found[1])
    )
    return WebhookState(
        workspace.name, "wrong" if problems else "registered", hook.id, "; ".join(problems)
    )
