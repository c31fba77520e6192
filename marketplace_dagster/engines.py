"""Where a workspace's exports run: in the Dagster process, or through Dagster Pipes in a process
of their own on this host (`subprocess`) or as a Databricks job inside the workspace (`databricks`).

Every engine runs `exports.export_versions`; the Pipes ones run it in `marketplace.pipes_export`
and report each version's outcome back, so the asset's materialization and the export summary
are the same whichever engine did the work.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from collections.abc import Sequence
from typing import Any

import dagster as dg

from marketplace.config import ExportEngineConfig
from marketplace.errors import MarketplaceError
from marketplace.exports import Outcome, export_versions
from marketplace.pipes_export import OUTCOMES_MESSAGE
from marketplace.registry import ProductionVersion, redact_text
from marketplace.storage_options import object_store_options

PACKAGE = "marketplace"
ENTRY_POINT = "marketplace-export"
JOB_ENVIRONMENT_KEY = "marketplace"


def job_extras(
    workspaces,
    name: str,
    external_storage,
    versions: Sequence[ProductionVersion],
    day: dt.date,
    *,
    inside_workspace: bool,
) -> dict:
    """What the export job needs, without a secret: credentials are named by their variables."""
    workspace = workspaces.get(name)
    tracking_uri, registry_uri = workspace.tracking_uri, workspace.registry_uri
    if inside_workspace:
        # A job inside the workspace reaches its own registry with the job's identity.
        tracking_uri = "databricks"
        registry_uri = (
            "databricks-uc"
            if (workspace.registry_uri or "").startswith("databricks-uc")
            else "databricks"
        )
    return {
        "workspace": name,
        "tracking_uri": tracking_uri,
        "registry_uri": registry_uri,
        "storage": dict(
            zip(
                ("root", "options", "options_env"),
                (external_storage.root, *object_store_options(external_storage.settings)),
            )
        ),
        "signing_key_env": external_storage.signing_key_env,
        "private_key_env": workspace.signing.private_key_env,
        "versions": [v.to_dict() for v in versions],
        "day": day.isoformat(),
        "source_marker": workspaces.source_marker,
        "client": {
            "timeout_seconds": workspaces.config.client.timeout_seconds,
            "max_retries": workspaces.config.client.max_retries,
            "max_workers": workspaces.config.client.max_workers,
        },
    }


def databricks_task(name: str, engine: ExportEngineConfig) -> tuple[Any, dict]:
    """The job's task and the submit arguments: the package's wheel, run by its entry point."""
    from databricks.sdk.service import jobs

    transport = "volumes" if engine.volume_path else "dbfs"
    task: dict[str, Any] = {
        "task_key": f"marketplace_export_{name}".replace("-", "_"),
        "python_wheel_task": {
            "package_name": PACKAGE,
            "entry_point": ENTRY_POINT,
            "parameters": ["--transport", transport],
        },
        "timeout_seconds": engine.timeout_seconds,
    }
    submit: dict[str, Any] = {
        "run_name": f"marketplace export: {name}",
        "timeout_seconds": engine.timeout_seconds,
    }
    if engine.serverless:
        task["environment_key"] = JOB_ENVIRONMENT_KEY
        submit["environments"] = [
            jobs.JobEnvironment.from_dict(
                {
                    "environment_key": JOB_ENVIRONMENT_KEY,
                    "spec": {
                        "environment_version": engine.environment_version,
                        "dependencies": [engine.wheel, *engine.libraries],
                    },
                }
            )
        ]
    else:
        task["libraries"] = [
            {"whl": engine.wheel},
            *({"pypi": {"package": p}} for p in engine.libraries),
        ]
        if engine.existing_cluster_id:
            task["existing_cluster_id"] = engine.existing_cluster_id
        else:
            cluster = dict(engine.new_cluster or {})
            cluster["spark_env_vars"] = {**cluster.get("spark_env_vars", {}), **engine.env}
            task["new_cluster"] = cluster
    return jobs.SubmitTask.from_dict(task), submit


def _idempotency_token(context: dg.AssetExecutionContext, name: str, day: dt.date) -> str:
    # A retried submit POST must not start a second job; a retried step must start a new one.
    seed = f"{context.run_id}:{context.retry_number}:{name}:{day.isoformat()}"
    return hashlib.sha256(seed.encode()).hexdigest()[:64]


def _run_databricks_job(
    context, workspaces, name: str, engine: ExportEngineConfig, extras: dict, day: dt.date
):
    from dagster_databricks.pipes import (
        PipesDatabricksClient,
        PipesDatabricksServerlessClient,
        PipesUnityCatalogVolumesContextInjector,
        PipesUnityCatalogVolumesMessageReader,
    )

    client = workspaces.workspace_client(name)
    task, submit = databricks_task(name, engine)
    submit["idempotency_token"] = _idempotency_token(context, name, day)
    if engine.serverless:
        pipes = PipesDatabricksServerlessClient(
            client, engine.volume_path, poll_interval_seconds=engine.poll_interval_seconds
        )
    elif engine.volume_path:
        pipes = PipesDatabricksClient(
            client,
            context_injector=PipesUnityCatalogVolumesContextInjector(
                client=client, volume_path=engine.volume_path
            ),
            message_reader=PipesUnityCatalogVolumesMessageReader(
                client=client,
                volume_path=engine.volume_path,
                interval=min(10.0, engine.poll_interval_seconds),
            ),
            poll_interval_seconds=engine.poll_interval_seconds,
        )
    else:
        pipes = PipesDatabricksClient(client, poll_interval_seconds=engine.poll_interval_seconds)
    return pipes.run(context=context, extras=extras, task=task, submit_args=submit)


def run_exports(
    context: dg.AssetExecutionContext,
    workspaces,
    name: str,
    external_storage,
    versions: Sequence[ProductionVersion],
    day: dt.date,
) -> list[Outcome]:
    """Export `versions` of workspace `name` with its engine; one outcome per version."""
    workspace = workspaces.get(name)
    engine = workspace.export
    if not versions:
        return []
    if engine.engine == "in_process":
        return export_versions(
            workspaces.client(name),
            tracking_uri=workspace.tracking_uri,
            registry_uri=workspace.registry_uri,
            storage=external_storage.storage,
            workspace=name,
            versions=versions,
            day=day,
            signing_key=external_storage.signing_key,
            source_marker=workspaces.source_marker,
            log=context.log,
            private_key=workspaces.private_key(name),
            max_workers=workspaces.max_workers,
        )
    external_storage.storage  # noqa: B018 - fail here, naming a missing storage variable, not in the job
    extras = job_extras(
        workspaces,
        name,
        external_storage,
        versions,
        day,
        inside_workspace=engine.engine == "databricks",
    )
    if engine.engine == "databricks":
        # {{secrets/scope/key}} -> scope/key: what a job without the variables reads through
        # dbutils.
        extras["secret_references"] = {n: r[len("{{secrets/") : -2] for n, r in engine.env.items()}
    try:
        if engine.engine == "subprocess":
            workspaces.client(name)  # a Databricks workspace's profile, which the process inherits
            invocation = dg.PipesSubprocessClient().run(
                context=context,
                extras=extras,
                command=[sys.executable, "-m", "marketplace.pipes_export"],
            )
        else:
            invocation = _run_databricks_job(context, workspaces, name, engine, extras, day)
    except MarketplaceError:
        raise
    except Exception as exc:  # noqa: BLE001 - what the job did is read back from storage below
        error = redact_text(f"the export job failed: {type(exc).__name__}: {exc}")
        context.log.error(f"{name}: {error}")
        return [_from_storage(external_storage, name, v, error) for v in versions]
    reported = {
        (o["model_name"], o["version"]): Outcome.from_dict(o)
        for message in invocation.get_custom_messages()
        if isinstance(message, dict)
        for o in message.get(OUTCOMES_MESSAGE, [])
    }
    return [
        reported.get((v.model_name, v.version))
        or _from_storage(external_storage, name, v, "the export job reported nothing for it")
        for v in versions
    ]


def _from_storage(external_storage, name: str, version: ProductionVersion, error: str) -> Outcome:
    """A version's outcome when the job did not report one: exported if storage holds its export
    (the job got that far), else failed with the job's error."""
    record = external_storage.existing_export(name, version.model_name, version.version)
    if record is not None:
        return Outcome(
            version.model_name, version.version, "already_exported", location=record.location
        )
    return Outcome(version.model_name, version.version, "failed", detail=error)
