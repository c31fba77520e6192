"""The workspace registry's webhooks for the Databricks stand-in: the registry-webhooks API and
signed deliveries after each registry change it forwards."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from urllib.parse import parse_qs

import requests


class RegistryWebhooks:
    """The workspace registry's webhooks, in memory, secrets included (`hooks`, by id), and their
    deliveries (`deliveries`: each webhook id, event, URL and the status it got, or the error).

    The API answers as Databricks documents it: ids of 32 hex digits, no secret or authorization
    ever listed, `REGISTERED_MODEL_CREATED` only on a registry-wide webhook, ACTIVE by default; a
    TEST_MODE or DISABLED webhook gets nothing. Payloads follow Databricks' published examples."""

    PREFIX = "/api/2.0/mlflow/registry-webhooks/"
    EVENTS = (
        "MODEL_VERSION_CREATED",
        "MODEL_VERSION_TRANSITIONED_STAGE",
        "TRANSITION_REQUEST_CREATED",
        "COMMENT_CREATED",
        "REGISTERED_MODEL_CREATED",
        "MODEL_VERSION_TAG_SET",
        "MODEL_VERSION_TRANSITIONED_TO_STAGING",
        "MODEL_VERSION_TRANSITIONED_TO_PRODUCTION",
        "MODEL_VERSION_TRANSITIONED_TO_ARCHIVED",
        "TRANSITION_REQUEST_TO_STAGING_CREATED",
        "TRANSITION_REQUEST_TO_PRODUCTION_CREATED",
        "TRANSITION_REQUEST_TO_ARCHIVED_CREATED",
    )
    TRANSITION = "/api/2.0/mlflow/model-versions/transition-stage"
    VERSION_CREATED = "/api/2.0/mlflow/model-versions/create"
    MODEL_CREATED = "/api/2.0/mlflow/registered-models/create"
    TAG_SET = "/api/2.0/mlflow/model-versions/set-tag"
    TRIGGERS = (TRANSITION, VERSION_CREATED, MODEL_CREATED, TAG_SET)
    STATUSES = ("ACTIVE", "DISABLED", "TEST_MODE")

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.hooks: dict[str, dict] = {}
        self.deliveries: list[dict] = []
        self._changed = threading.Condition()

    @staticmethod
    def _error(status: int, code: str, message: str) -> tuple[int, dict]:
        return status, {"error_code": code, "message": message}

    @staticmethod
    def _listed(hook: dict) -> dict:
        shown = {k: v for k, v in hook.items() if k not in ("http_url_spec", "job_spec")}
        if "http_url_spec" in hook:
            shown["http_url_spec"] = {
                "url": hook["http_url_spec"]["url"],
                "enable_ssl_verification": hook["http_url_spec"].get(
                    "enable_ssl_verification", True
                ),
            }
        if "job_spec" in hook:
            shown["job_spec"] = {k: v for k, v in hook["job_spec"].items() if k != "access_token"}
        return shown

    def _invalid(self, hook: dict) -> tuple[int, dict] | None:
        events = hook.get("events")
        if not events or not isinstance(events, list) or set(events) - set(self.EVENTS):
            return self._error(
                400,
                "INVALID_PARAMETER_VALUE",
                f"events: {events!r} is not a list of webhook events",
            )
        if ("http_url_spec" in hook) == ("job_spec" in hook):
            return self._error(
                400,
                "INVALID_PARAMETER_VALUE",
                "exactly one of http_url_spec and job_spec is required",
            )
        if "http_url_spec" in hook and not hook["http_url_spec"].get("url"):
            return self._error(400, "INVALID_PARAMETER_VALUE", "http_url_spec.url is required")
        if hook.get("model_name") and "REGISTERED_MODEL_CREATED" in events:
            return self._error(
                400,
                "INVALID_PARAMETER_VALUE",
                "REGISTERED_MODEL_CREATED can only be specified for a registry-wide webhook",
            )
        if hook.get("status", "ACTIVE") not in self.STATUSES:
            return self._error(400, "INVALID_PARAMETER_VALUE", f"status: {hook['status']!r}")
        return None

    def serve(self, method: str, path: str, query: str, body: bytes) -> tuple[int, dict]:
        request = json.loads(body or b"{}")
        asked = parse_qs(query)
        action = path.removeprefix(self.PREFIX)
        now = int(time.time() * 1000)
        with self._changed:
            if (method, action) == ("POST", "create"):
                hook = {
                    k: request[k]
                    for k in (
                        "description",
                        "events",
                        "http_url_spec",
                        "job_spec",
                        "model_name",
                        "status",
                    )
                    if request.get(k) is not None
                }
                if (invalid := self._invalid(hook)) is not None:
                    return invalid
                if (
                    hook.get("model_name")
                    and not requests.get(
                        f"{self.upstream}/api/2.0/mlflow/registered-models/get",
                        params={"name": hook["model_name"]},
                        timeout=30,
                    ).ok
                ):
                    return self._error(
                        404,
                        "RESOURCE_DOES_NOT_EXIST",
                        f"Model '{hook['model_name']}' does not exist.",
                    )
                hook.update(
                    id=secrets.token_hex(16), creation_timestamp=now, last_updated_timestamp=now
                )
                hook.setdefault("status", "ACTIVE")
                self.hooks[hook["id"]] = hook
                return 200, {"webhook": self._listed(hook)}
            if (method, action) == ("GET", "list"):
                wanted = set(asked.get("events", []))
                model = asked.get("model_name", [None])[0]
                found = [
                    self._listed(h)
                    for h in self.hooks.values()
                    if (not wanted or wanted & set(h["events"]))
                    and (model is None or h.get("model_name") == model)
                ]
                start, size = (
                    int(asked.get("page_token", ["0"])[0]),
                    int(asked.get("max_results", ["100"])[0]),
                )
                page = {"webhooks": found[start : start + size]}
                if start + size < len(found):
                    page["next_page_token"] = str(start + size)
                return 200, page
            if (method, action) == ("PATCH", "update"):
                hook = self.hooks.get(request.get("id", ""))
                if hook is None:
                    return self._error(
                        404,
                        "RESOURCE_DOES_NOT_EXIST",
                        f"Webhook {request.get('id')} does not exist.",
                    )
                changed = {
                    **hook,
                    **{
                        k: request[k]
                        for k in ("description", "events", "http_url_spec", "job_spec", "status")
                        if request.get(k) is not None
                    },
                }
                if "http_url_spec" in request and "job_spec" in request:
                    return self._error(
                        400, "INVALID_PARAMETER_VALUE", "give one of http_url_spec and job_spec"
                    )
                for kind, other in (("http_url_spec", "job_spec"), ("job_spec", "http_url_spec")):
                    if kind in request:
                        changed.pop(other, None)
                if (invalid := self._invalid(changed)) is not None:
                    return invalid
                changed["last_updated_timestamp"] = now
                self.hooks[hook["id"]] = changed
                return 200, {"webhook": self._listed(changed)}
            if (method, action) == ("DELETE", "delete"):
                hook_id = asked.get("id", [request.get("id", "")])[0]
                if self.hooks.pop(hook_id, None) is None:
                    return self._error(
                        404, "RESOURCE_DOES_NOT_EXIST", f"Webhook {hook_id} does not exist."
                    )
                return 200, {}
        return self._error(
            404, "ENDPOINT_NOT_FOUND", f"{method} {path} is not served by the stand-in"
        )

    def stage_of(self, body: bytes) -> str | None:
        """The stage of the version a transition names, before it moves (`from_stage`)."""
        request = json.loads(body or b"{}")
        found = requests.get(
            f"{self.upstream}/api/2.0/mlflow/model-versions/get",
            params={"name": request.get("name"), "version": request.get("version")},
            timeout=30,
        )
        return found.json()["model_version"].get("current_stage", "None") if found.ok else None

    def fire(self, path: str, request: dict, answer: dict, from_stage: str | None) -> None:
        """Queue a delivery of each event this change raises to each webhook that hears it."""
        version = answer.get("model_version", {})
        name = (
            version.get("name")
            or answer.get("registered_model", {}).get("name")
            or request.get("name")
        )
        number = str(version.get("version") or request.get("version") or "")
        if path == self.TRANSITION:
            to_stage = version.get("current_stage") or request.get("stage")
            events = ["MODEL_VERSION_TRANSITIONED_STAGE"]
            if f"MODEL_VERSION_TRANSITIONED_TO_{to_stage.upper()}" in self.EVENTS:
                events.append(f"MODEL_VERSION_TRANSITIONED_TO_{to_stage.upper()}")
            fields = {
                "version": number,
                "to_stage": to_stage,
                "from_stage": from_stage or "None",
                "text": f"Registered model '{name}' version {number} transitioned from "
                f"{from_stage or 'None'} to {to_stage}.",
            }
        elif path == self.VERSION_CREATED:
            events, fields = (
                ["MODEL_VERSION_CREATED"],
                {
                    "version": number,
                    "text": f"A new version {number} of registered model '{name}' was created.",
                },
            )
        elif path == self.MODEL_CREATED:
            events, fields = (
                ["REGISTERED_MODEL_CREATED"],
                {"text": f"Registered model '{name}' was created."},
            )
        else:
            tag = {"key": request.get("key"), "value": request.get("value")}
            events, fields = (
                ["MODEL_VERSION_TAG_SET"],
                {
                    "version": number,
                    "tags": [tag],
                    "text": f"set version tag(s) '{tag['key']}' => '{tag['value']}' "
                    f"for registered model '{name}' "
                    f"version {number}.",
                },
            )
        with self._changed:
            targets = [
                (dict(hook), event)
                for hook in self.hooks.values()
                for event in events
                if hook["status"] == "ACTIVE"
                and event in hook["events"]
                and "http_url_spec" in hook
                and hook.get("model_name") in (None, name)
            ]
        if targets:
            threading.Thread(
                target=self._deliver,
                args=(targets, name, fields),
                daemon=True,
                name="standin-webhook-delivery",
            ).start()

    def _deliver(self, targets: list[tuple[dict, str]], name: str, fields: dict) -> None:
        for hook, event in targets:
            spec = hook["http_url_spec"]
            payload = {
                "event": event,
                "webhook_id": hook["id"],
                "event_timestamp": int(time.time() * 1000),
                "model_name": name,
                **fields,
            }
            body = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json"}
            if spec.get("secret"):
                headers["X-Databricks-Signature"] = hmac.new(
                    spec["secret"].encode(), body, hashlib.sha256
                ).hexdigest()
            if spec.get("authorization"):
                headers["Authorization"] = spec["authorization"]
            record = {
                "webhook_id": hook["id"],
                "event": event,
                "url": spec["url"],
                "payload": payload,
            }
            try:
                answer = requests.post(
                    spec["url"],
                    data=body,
                    headers=headers,
                    timeout=10,
                    verify=spec.get("enable_ssl_verification", True),
                )
                record["status"] = answer.status_code
            except requests.RequestException as exc:
                record["error"] = type(exc).__name__
            with self._changed:
                self.deliveries.append(record)
                self._changed.notify_all()

    def wait_for_deliveries(self, count: int, timeout: float = 30) -> list[dict]:
        """The deliveries made so far, once there are at least `count` (or `timeout` passed)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.deliveries) >= count, timeout)
            return list(self.deliveries)
