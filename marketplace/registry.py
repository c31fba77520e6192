"""Talking to MLflow registries: clients with sane timeouts, production selection, the seed's
marker."""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote, urlparse
from urllib.request import url2pathname

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

from marketplace.errors import MarketplaceError

MARKER_PREFIX = "Exported Already On "
EXPORTED_ON_TAG = "marketplace.exported_on"
PAGE_SIZE = 1000

# What an unreachable or failing registry raises through MLflow's client.
REGISTRY_ERRORS = (MlflowException, requests.exceptions.RequestException, OSError)


class RegistryUnavailable(MarketplaceError, RuntimeError):
    """A registry that could not be reached or failed: the partition fails, naming it and its
    URI."""


@contextlib.contextmanager
def registry_errors(who: str, uri: str, consequence: str = "") -> Iterator[None]:
    """An unreachable or failing registry fails the partition, naming it and its URI."""
    try:
        yield
    except REGISTRY_ERRORS as exc:
        # Not chained: the cause's text quotes the request URL, credentials included.
        raise RegistryUnavailable(
            f"{who}: registry at {redact_uri(uri)} failed: {type(exc).__name__}: "
            f"{redact_text(str(exc))}" + (f" ({consequence})" if consequence else "")
        ) from None


def configure_http(timeout_seconds: int, max_retries: int) -> None:
    """Bound every MLflow REST call of this process (the defaults add up to minutes)."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_seconds)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0.5"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def make_client(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    # MLflow 3's client reads the registered model before each registry write to refuse writing
    # to a prompt: a round trip per write, a fifth of a sync's requests. We write only to models
    # we selected (the registry's model search leaves prompts out) or created, and the import
    # refuses a marketplace name a prompt holds (imports.check_name_owner).
    client._raise_if_prompt = _not_checked
    # Terminating a run reads it again only to print its URL; the imports terminate one per version.
    os.environ.setdefault(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.name, "true")
    _record_absent_probes()
    return client


def _not_checked(name: str) -> None:
    return None


# Each REST call asks whether it runs in a Databricks notebook or job by importing Databricks'
# runtime and IPython. Where they are not installed, each failed import searches sys.path again
# (0.5 ms a call, 6 % of a run's CPU). Marked absent, the same imports fail at once; where they
# are installed (on Databricks), nothing changes.
DATABRICKS_PROBES = ("dbruntime", "IPython")


def _record_absent_probes() -> None:
    for name in DATABRICKS_PROBES:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = None  # `import name` raises ModuleNotFoundError, as it did


def redact_uri(uri: str) -> str:
    """A URI safe to show: user info (which can hold a token) removed."""
    return redact_text(uri)


# In abfss://container@account... the part before '@' is a container name, not user info.
_URL_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.-])(?!(?:abfss?|az|wasbs?)://)(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@"
)


def redact_text(text: str) -> str:
    """`text` (an error message, say) with the user info of every URL in it removed.

    MLflow's exceptions quote the request URL, credentials and all.
    """
    return _URL_USERINFO.sub(r"\g<scheme>", text)


class _SharedUris:
    """The process-wide tracking and registry URIs, shared by every thread that wants the same
    pair: threads wanting another pair wait until no thread uses the current one. A thread alone
    may nest a block with another pair (its own, stack-wise); nobody joins while it does."""

    def __init__(self):
        self._changed = threading.Condition()
        self._levels: list[dict] = []  # {"uris", "saved", "holders"}, the outermost first
        self._threads: dict[int, int] = {}  # thread -> blocks it holds

    @contextlib.contextmanager
    def hold(self, uris: tuple[str, str]) -> Iterator[None]:
        me = threading.get_ident()
        with self._changed:
            while True:
                top = self._levels[-1] if self._levels else None
                if (
                    top is not None
                    and top["uris"] == uris
                    and (len(self._levels) == 1 or set(self._threads) <= {me})
                ):
                    level = top
                    break
                if set(self._threads) <= {me}:
                    level = {"uris": uris, "saved": _swap_uris(uris), "holders": 0}
                    self._levels.append(level)
                    break
                self._changed.wait()
            level["holders"] += 1
            self._threads[me] = self._threads.get(me, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                level["holders"] -= 1
                self._threads[me] -= 1
                if not self._threads[me]:
                    del self._threads[me]
                if not level["holders"]:
                    self._levels.remove(level)
                    _restore_uris(level["saved"])
                self._changed.notify_all()


def _swap_uris(uris: tuple[str, str]) -> tuple:
    """Point MLflow at `uris`; what was there before."""
    from mlflow.tracking import _model_registry, _tracking_service

    # MLflow's own module state (set_*_uri(None) also clears the variable), then the variables.
    saved = (
        _tracking_service.utils._tracking_uri,
        _model_registry.utils._registry_uri,
        {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")},
    )
    mlflow.set_tracking_uri(uris[0])
    mlflow.set_registry_uri(uris[1])
    return saved


def _restore_uris(saved: tuple) -> None:
    mlflow.set_tracking_uri(saved[0])
    mlflow.set_registry_uri(saved[1])
    for name, value in saved[2].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_process_uris = _SharedUris()


@contextlib.contextmanager
def process_tracking_uri(uri: str, registry_uri: str | None = None) -> Iterator[None]:
    """Point the process-wide tracking and registry URIs at `uri` (and `registry_uri`, by
    default the same) for the block, then put back exactly what was there.

    mlflow-export-import reads the process-wide URI in places (logged-model artifact
    listing, UC version creation), and `models:/` URIs resolve against the process-wide
    registry (for databricks://, MLflow would pick Unity Catalog). Threads that want the same
    URIs (the export pool of one workspace, the import pool) run together; a thread that wants
    others waits until they are free.
    """
    with _process_uris.hold((uri, registry_uri or uri)):
        yield


def searched(result, field: str) -> dict:
    """A search result's `tags` or `aliases`, or {} where the registry leaves them out (Unity
    Catalog's search results raise on reading either): the caller then reads the object itself."""
    try:
        return getattr(result, field) or {}
    except Exception:  # noqa: BLE001 - "gathered through search ... do not have tags"
        return {}


def filter_literal(value: str) -> str:
    """Quote a value for an MLflow search filter."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"model name {value!r} contains both quote characters and cannot be searched")


@dataclass(frozen=True)
class ProductionVersion:
    """One workspace model's production version, as read from its registry."""

    model_name: str
    version: int
    run_id: str
    source: str
    created_at: dt.datetime
    selected_by: str
    # The registry's answer already carried the export marker and tag: nothing to read or write.
    marked: bool = False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ProductionVersion:
        return cls(**{**data, "created_at": dt.datetime.fromisoformat(data["created_at"])})


@dataclass(frozen=True)
class Selection:
    """What a registry scan found: the versions to sync and why other models were left out."""

    versions: list[ProductionVersion]
    skipped: dict[str, str]
    models_seen: int


def _ms_to_datetime(ms: int | None) -> dt.datetime:
    return dt.datetime.fromtimestamp((ms or 0) / 1000, tz=dt.UTC)


def is_curated(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    matches = lambda patterns: any(fnmatch.fnmatchcase(name, p) for p in patterns)
    return matches(include) and not matches(exclude)


def list_models(client: MlflowClient) -> list:
    """Every registered model, as search returns it (with each stage's newest version)."""
    models: list = []
    token = None
    while True:
        page = client.search_registered_models(max_results=PAGE_SIZE, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models


def versions_of(client: MlflowClient, name: str) -> list[ModelVersion]:
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(
            filter_string=f"name={filter_literal(name)}", max_results=PAGE_SIZE, page_token=token
        )
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def in_stage(version: ModelVersion, stage: str) -> bool:
    return (version.current_stage or "").lower() == stage.lower()


def is_ready(version: ModelVersion) -> bool:
    return (version.status or "READY") == "READY"


def choose_production(candidates, registered_by: dt.datetime | None = None) -> ModelVersion | None:
    """The production version among a model's versions in the production stage: the newest one
    that is READY (registered by `registered_by`, if given). The one rule, for the assets and the
    sensor."""
    eligible = [
        v
        for v in candidates
        if is_ready(v)
        and (registered_by is None or _ms_to_datetime(v.creation_timestamp) <= registered_by)
    ]
    return max(eligible, key=lambda v: int(v.version), default=None)


def aliased_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, whatever its status: an alias names production explicitly
    (a version that cannot be exported fails its export, saying why, instead of retiring the
    model)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def newest_production_version(
    client: MlflowClient,
    name: str,
    *,
    stage: str | None,
    alias: str | None,
    registered_by: dt.datetime | None = None,
    searched_model=None,
) -> ModelVersion | None:
    """`name`'s production version: the one holding `alias`, or the newest READY one in `stage`;
    registered by `registered_by`, if given. `searched_model` (its search result) spares reading
    the versions where its newest version in `stage` is the answer."""
    if alias is not None:
        version = aliased_version(client, name, alias)
        if version is None or (
            registered_by is not None
            and _ms_to_datetime(version.creation_timestamp) > registered_by
        ):
            return None
        return version
    assert stage is not None
    latest = (searched_model.latest_versions or []) if searched_model is not None else []
    if latest:  # each stage's newest version; a result without any is read in full
        newest = [v for v in latest if in_stage(v, stage)]
        if not newest:
            return None
        chosen = choose_production(newest, registered_by)
        if chosen is not None:
            return chosen
        # Not READY, or registered later: an older version in the stage may be the answer.
    return choose_production(
        [v for v in versions_of(client, name) if in_stage(v, stage)], registered_by
    )


def select_production_versions(
    client: MlflowClient,
    *,
    stage: str | None,
    alias: str | None,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    registered_by: dt.datetime | None = None,
) -> Selection:
    """For each curated registered model, its newest production version; models with none
    skipped."""
    models = {model.name: model for model in list_models(client)}
    selector = f"stage {stage}" if stage else f"alias @{alias}"
    versions: list[ProductionVersion] = []
    skipped: dict[str, str] = {}
    for name in sorted(models):
        if not is_curated(name, include, exclude):
            skipped[name] = "not curated (include/exclude)"
            continue
        version = newest_production_version(
            client,
            name,
            stage=stage,
            alias=alias,
            registered_by=registered_by,
            searched_model=models[name],
        )
        if version is None:
            skipped[name] = f"no version in {selector}" + (
                f" registered by {registered_by:%Y-%m-%d}" if registered_by else ""
            )
            continue
        versions.append(
            ProductionVersion(
                model_name=name,
                version=int(version.version),
                run_id=version.run_id or "",
                source=version.source or "",
                created_at=_ms_to_datetime(version.creation_timestamp),
                selected_by=selector,
                marked=is_marked(version),
            )
        )
    return Selection(versions=versions, skipped=skipped, models_seen=len(models))


def marker_description(day: dt.date, old_description: str | None) -> str:
    """The seed's exact marker wording."""
    return f"{MARKER_PREFIX}{day.isoformat()}, old description: {old_description or ''}"


def is_marked(version: ModelVersion) -> bool:
    """The version carries the export marker and tag (False where its search result leaves tags
    out)."""
    return (version.description or "").startswith(MARKER_PREFIX) and EXPORTED_ON_TAG in searched(
        version, "tags"
    )


def mark_exported(client: MlflowClient, name: str, version: int, day: dt.date) -> bool:
    """Write the seed's description marker and our tag on a source version; False if already
    marked."""
    current = client.get_model_version(name, str(version))
    changed = False
    if not (current.description or "").startswith(MARKER_PREFIX):
        client.update_model_version(
            name, str(version), description=marker_description(day, current.description)
        )
        changed = True
    if EXPORTED_ON_TAG not in (current.tags or {}):
        client.set_model_version_tag(name, str(version), EXPORTED_ON_TAG, day.isoformat())
        changed = True
    return changed


def files_at(artifact_location: str, tracking_uri: str):
    """The artifact store of a run or logged model whose location is known, as MlflowClient
    finds it after reading the run or model for that location."""
    return get_artifact_repository(
        add_databricks_profile_info_to_artifact_uri(artifact_location, tracking_uri),
        tracking_uri=tracking_uri,
    )


def artifact_listing(artifact_uri: str) -> dict[str, int | None]:
    """Every file under `artifact_uri` with its size (None where the store does not say), read
    where it is for a folder on this machine; for any other store, with the process-wide URIs
    (a `models:/` URI resolves against them)."""
    local = local_folder(artifact_uri)
    if local is not None:
        return {
            p.relative_to(local).as_posix(): p.stat().st_size
            for p in local.rglob("*")
            if p.is_file()
        }
    repo = get_artifact_repository(artifact_uri)
    sizes, pending = {}, [None]
    while pending:
        for entry in repo.list_artifacts(pending.pop()):
            if entry.is_dir:
                pending.append(entry.path)
            else:
                sizes[entry.path] = entry.file_size
    return sizes


def local_folder(artifact_uri: str) -> Path | None:
    """The folder an artifact location names when it is on this machine's filesystem (a registry
    whose artifact store clients write to directly), else None: read there, not downloaded."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme not in ("", "file") or (
        parsed.scheme == "file" and parsed.netloc not in ("", "localhost")
    ):
        return None
    path = Path(url2pathname(parsed.path) if parsed.scheme == "file" else artifact_uri)
    return path if path.is_absolute() and path.is_dir() else None


def model_version_url(
    tracking_uri: str, name: str, version: int | str, host: str | None = None
) -> str:
    """The version's page in the MLflow UI (`host` for a databricks:// URI, which is a profile)."""
    base = (host or redact_uri(tracking_uri)).rstrip("/")
    if not base.startswith("http"):
        return f"models:/{name}/{version}"
    return f"{base}/#/models/{quote(name, safe='')}/versions/{version}"
