"""The marketplace's own webhook on each source registry: `marketplace-sync`, created or brought
up to date (register_webhooks), and inspected for source_webhooks_registered (inspect_webhook).
MLflow sources through MLflow's webhook API; Databricks workspace registries through
marketplace.databricks_webhooks."""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.exceptions import MlflowException

from marketplace.databricks import ensure_profile
from marketplace.databricks_webhooks import ensure_databricks_webhook, inspect_databricks_webhook
from marketplace.registry import make_client, redact_text
from marketplace.webhooks import MLFLOW_EVENTS, WEBHOOK_NAME, WebhookState, webhook_url


def _all_webhooks(client) -> list:
    found, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def ensure_mlflow_webhook(client, workspace: str, url: str, secret: str) -> WebhookState:
    """Create the source's `marketplace-sync` webhook, or bring it to `url`, our events and the
    current secret. A source that cannot hold webhooks (a file store, MLflow before 3.3, Unity
    Catalog) is reported, not raised: that workspace keeps polling."""
    try:
        existing = [w for w in _all_webhooks(client) if w.name == WEBHOOK_NAME]
        if not existing:
            made = client.create_webhook(
                WEBHOOK_NAME,
                url,
                list(MLFLOW_EVENTS),
                secret=secret,
                status="ACTIVE",
                description="The model marketplace's sync: a change here is synced within seconds.",
            )
            return WebhookState(workspace, "created", made.webhook_id)
        first, *extra = existing
        for duplicate in extra:  # two marketplaces' races leave at most one behind
            client.delete_webhook(duplicate.webhook_id)
        client.update_webhook(
            first.webhook_id, url=url, events=list(MLFLOW_EVENTS), secret=secret, status="ACTIVE"
        )
        return WebhookState(workspace, "updated", first.webhook_id)
    except MlflowException as exc:
        return _failure(workspace, exc)


def _failure(workspace: str, exc: Exception) -> WebhookState:
    code = getattr(exc, "error_code", "")
    text = redact_text(str(exc))[:300]
    # A file store, an MLflow before 3.3 or Unity Catalog has no webhook endpoints at all.
    unsupported = isinstance(exc, MlflowException) and (
        code in ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "FEATURE_DISABLED")
        or "404" in text
        or "not support" in text
    )
    return WebhookState(
        workspace,
        "unsupported" if unsupported else "failed",
        detail=f"{type(exc).__name__}: {text}",
    )


def register_webhooks(workspaces, base_url: str, environ: Mapping[str, str]) -> list[WebhookState]:
    """Ensure the `marketplace-sync` webhook on every workspace whose `webhook.manage` is on."""
    states = []
    for workspace in workspaces:
        if workspace.webhook is None or not workspace.webhook.manage:
            continue
        secret = environ.get(workspace.webhook.secret_env)
        if not secret:
            states.append(
                WebhookState(
                    workspace.name,
                    "failed",
                    detail=f"webhook.secret_env: {workspace.webhook.secret_env} is not set",
                )
            )
            continue
        if workspace.databricks is not None:  # registry webhooks, through Databricks' own API
            url = webhook_url(base_url, workspace.name, "databricks")
            states.append(ensure_databricks_webhook(workspace, url, secret))
            continue
        try:
            ensure_profile(
                f"workspace {workspace.name}", workspace.tracking_uri, workspace.databricks
            )
            client = make_client(workspace.tracking_uri, workspace.registry_uri)
            states.append(
                ensure_mlflow_webhook(
                    client, workspace.name, webhook_url(base_url, workspace.name), secret
                )
            )
        except Exception as exc:  # noqa: BLE001 - one source's failure is reported; the others register
            states.append(_failure(workspace.name, exc))
    return states


def inspect_webhook(workspace, base_url: str) -> WebhookState:
    """Read-only: is the source's `marketplace-sync` webhook there, active, pointed at the
    receiver and subscribed to every event the sync needs?"""
    if workspace.databricks is not None:  # registry webhooks, through Databricks' own API
        return inspect_databricks_webhook(
            workspace, webhook_url(base_url, workspace.name, "databricks")
        )
    url = webhook_url(base_url, workspace.name)
    try:
        ensure_profile(f"workspace {workspace.name}", workspace.tracking_uri, workspace.databricks)
        hooks = [
            w
            for w in _all_webhooks(make_client(workspace.tracking_uri, workspace.registry_uri))
            if w.name == WEBHOOK_NAME
        ]
    except Exception as exc:  # noqa: BLE001 - reported by the check
        return _failure(workspace.name, exc)
    if not hooks:
        return WebhookState(workspace.name, "missing", detail=f"no webhook named {WEBHOOK_NAME}")
    hook = hooks[0]
    events = {str(e) for e in hook.events}
    problems = []
    if hook.url != url:
        problems.append(f"it calls {hook.url}, not {url}")
    if missing := sorted(set(MLFLOW_EVENTS) - events):
        problems.append("it misses " + ", ".join(missing))
    if str(getattr(hook.status, "value", hook.status)).upper() != "ACTIVE":
        problems.append(f"it is {hook.status}")
    return WebhookState(
        workspace.name, "wrong" if problems else "registered", hook.webhook_id, "; ".join(problems)
    )
