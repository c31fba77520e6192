"""source_webhooks_registered: which sources push their changes, and which are only polled."""

from __future__ import annotations

import dagster as dg
from mlflow import MlflowClient

from harness.local_servers import free_port
from marketplace.registry import configure_http
from marketplace.source_webhooks import register_webhooks
from marketplace.webhooks import WEBHOOK_NAME
from marketplace_dagster.keys import PRODUCTION_MODELS, SOURCE_WEBHOOKS_REGISTERED
from marketplace_tests.testing.deployments import step_failure_message
from marketplace_tests.testing.webhooks import SECRET_ENV


def _run_check(deployment) -> dg.AssetCheckEvaluation:
    job = deployment.defs.resolve_job_def("marketplace_checks_job").get_subset(
        asset_check_selection={dg.AssetCheckKey(PRODUCTION_MODELS, SOURCE_WEBHOOKS_REGISTERED)}
    )
    result = job.execute_in_process(instance=deployment.instance, raise_on_error=False)
    assert result.success, step_failure_message(result)
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def _remove_ours(uri: str) -> None:
    client = MlflowClient(uri)
    for hook in client.list_webhooks():
        if hook.name == WEBHOOK_NAME:
            client.delete_webhook(hook.webhook_id)


def test_check_names_each_source_that_does_not_push_and_counts_those_only_polled(
    servers, deploy, uid, monkeypatch
):
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    dead = f"http://127.0.0.1:{free_port()}"
    hooked = {"webhook": {"secret_env": SECRET_ENV}}
    deployment = deploy(
        [
            {
                "name": "pushes",
                "tracking_uri": servers["ws_a"].uri,
                "production": {"stage": "Production"},
                "include": [f"{uid}_*"],
                **hooked,
            },
            {
                "name": "unregistered",
                "tracking_uri": servers["ws_b"].uri,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
                "webhook": {"secret_env": SECRET_ENV, "manage": False},
            },
            {"name": "down", "tracking_uri": dead, "production": {"stage": "Production"}, **hooked},
            {
                "name": "polled",
                "tracking_uri": servers["ws_b"].uri,
                "production": {"alias": "champion"},
                "include": [f"{uid}_*"],
            },
        ],
        sensor={"request_timeout_seconds": 2},
        webhooks={"listen": f"127.0.0.1:{free_port()}"},
    )
    configure_http(
        2, 0
    )  # as the receiver does: a source down costs seconds (conftest restores the variables)
    try:
        states = {
            s.workspace: s
            for s in register_webhooks(
                deployment.config.workspaces,
                deployment.config.webhooks.base_url,
                {SECRET_ENV: "s3cret"},
            )
        }
        assert states["pushes"].action == "created" and states["down"].action == "failed"
        assert (
            "unregistered" not in states and "polled" not in states
        )  # manage: false, and no webhook

        evaluation = _run_check(deployment)
        assert not evaluation.passed
        assert evaluation.severity == dg.AssetCheckSeverity.WARN  # they still sync, by polling
        metadata = {k: v.value for k, v in evaluation.metadata.items()}
        assert (
            metadata["workspaces_with_webhook"],
            metadata["webhooks_registered"],
            metadata["webhooks_not_registered"],
            metadata["polling_only"],
        ) == (3, 1, 2, 1)
        assert (
            "unregistered: missing" in evaluation.description
            and "down: failed" in evaluation.description
        )
        assert "pushes" not in evaluation.description

        # A webhook pointed elsewhere is as good as none.
        client = MlflowClient(servers["ws_a"].uri)
        (ours,) = [h for h in client.list_webhooks() if h.name == WEBHOOK_NAME]
        client.update_webhook(ours.webhook_id, url="http://127.0.0.1:9/elsewhere")
        assert (
            "pushes: wrong (it calls http://127.0.0.1:9/elsewhere"
            in _run_check(deployment).description
        )
    finally:
        _remove_ours(servers["ws_a"].uri)
