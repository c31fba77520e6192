"""The export as a process of its own, launched by Dagster Pipes: `marketplace-export`.

Run by `PipesSubprocessClient` on the Dagster host, or as a Databricks job (`python_wheel_task`,
entry point `marketplace-export`) inside the workspace, for models whose artifacts only the
workspace can reach or that are too large to move through the Dagster process. It runs the same
`exports.export_versions` as the in-process path and reports each version's outcome back as a
Pipes custom message. Secrets never travel in the Pipes context: storage credentials and the
signing key are read from the environment variables the context names.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from dagster_pipes import (
    PipesCliArgsParamsLoader,
    PipesContext,
    PipesDefaultContextLoader,
    PipesDefaultMessageWriter,
    PipesEnvVarParamsLoader,
    PipesUnityCatalogVolumesContextLoader,
    PipesUnityCatalogVolumesMessageWriter,
    open_dagster_pipes,
)

from marketplace.errors import MarketplaceError

TRANSPORTS = ("local", "volumes", "dbfs")
OUTCOMES_MESSAGE = "outcomes"


class JobSettingsError(MarketplaceError, RuntimeError):
    """The job was started without what it needs (a variable, a setting)."""


def _transport(name: str):
    """(context loader, message writer) for how this process talks to Dagster."""
    if name == "volumes":
        return PipesUnityCatalogVolumesContextLoader(), PipesUnityCatalogVolumesMessageWriter()
    if name == "dbfs":
        from dagster_pipes import PipesDbfsContextLoader, PipesDbfsMessageWriter

        return PipesDbfsContextLoader(), PipesDbfsMessageWriter()
    return PipesDefaultContextLoader(), PipesDefaultMessageWriter()


def _params_loader(argv: list[str]):
    # On an existing cluster or serverless, Pipes passes its parameters as arguments; on a new
    # cluster or a local process, as environment variables.
    return (
        PipesCliArgsParamsLoader()
        if "--dagster-pipes-context" in argv
        else PipesEnvVarParamsLoader()
    )


def _environment(variable: str | None, what: str, references: dict[str, str]) -> str | None:
    """The variable's value; in a Databricks job without it in its environment (serverless, an
    existing cluster), read from the Databricks secret it maps to, with the job's own identity."""
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value and variable in references:
        from databricks.sdk.runtime import dbutils  # the runtime's own, or the SDK's remote one

        scope, key = references[variable].split("/", 1)
        value = dbutils.secrets.get(scope=scope, key=key)
    if not value:
        raise JobSettingsError(
            f"the environment variable {variable} ({what}) is not set in the export job"
        )
    return value


def export_from_extras(pipes: PipesContext) -> list[dict]:
    """Do the export the extras describe; the outcome of each version, as dicts."""
    from marketplace.exports import export_versions
    from marketplace.registry import ProductionVersion, configure_http, make_client
    from marketplace.storage_options import open_storage

    extras = pipes.extras
    references = extras.get("secret_references", {})
    storage_settings = extras["storage"]
    options = dict(storage_settings["options"])
    for option, variable in storage_settings["options_env"].items():
        options[option] = _environment(variable, f"external storage {option}", references)
    storage = open_storage(storage_settings["root"], options)
    signing_key = _environment(
        extras.get("signing_key_env"), "the manifest signing key", references
    )
    private_key = _environment(
        extras.get("private_key_env"),
        "the workspace's signing key (signing.private_key_env)",
        references,
    )
    if private_key:
        from marketplace.signatures import check_private_key

        try:
            check_private_key(private_key)
        except ValueError as exc:
            raise JobSettingsError(
                f"{extras.get('private_key_env')} (signing.private_key_env): {exc}"
            ) from None
    configure_http(extras["client"]["timeout_seconds"], extras["client"]["max_retries"])
    client = make_client(extras["tracking_uri"], extras["registry_uri"])
    versions = [ProductionVersion.from_dict(v) for v in extras["versions"]]
    outcomes = export_versions(
        client,
        tracking_uri=extras["tracking_uri"],
        registry_uri=extras["registry_uri"],
        storage=storage,
        workspace=extras["workspace"],
        versions=versions,
        day=dt.date.fromisoformat(extras["day"]),
        signing_key=signing_key,
        source_marker=extras["source_marker"],
        log=pipes.log,
        private_key=private_key,
        max_workers=extras["client"].get(
            "max_workers", 1
        ),  # absent in a job an older release submitted
    )
    return [o.to_dict() for o in outcomes]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="marketplace-export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="local",
        help="how the Pipes context and messages travel (local files, a UC volume, DBFS)",
    )
    args, _ = parser.parse_known_args(argv)  # Pipes adds its own --dagster-pipes-* arguments
    params_loader = _params_loader(argv)
    if not params_loader.is_dagster_pipes_process():
        parser.error(
            "not started by Dagster Pipes: this runs as the exports asset's job, not by hand"
        )
    context_loader, message_writer = _transport(args.transport)
    with open_dagster_pipes(
        context_loader=context_loader, message_writer=message_writer, params_loader=params_loader
    ) as pipes:
        outcomes = export_from_extras(pipes)
        pipes.report_custom_message({OUTCOMES_MESSAGE: outcomes})
        failed = sum(1 for o in outcomes if o["status"] == "failed")
        pipes.log.info(
            f"{len(outcomes)} version(s): {len(outcomes) - failed} done, {failed} failed"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
