"""Configuration fuzzed: whatever the file holds, loading it either works or names the file and
key."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketplace.config import ConfigError, load_config
from marketplace_dagster.definitions import build_definitions

BASE = {
    "start_date": "2026-10-01",
    "source_marker": True,
    "external_storage": {"uri": "external"},
    "marketplace": {
        "tracking_uri": "http://127.0.0.1:5000",
        "name_template": "{workspace}.{model}",
        "alias": "production",
    },
    "workspaces": [
        {
            "name": "dev01",
            "tracking_uri": "http://127.0.0.1:5001",
            "production": {"stage": "Production"},
            "include": ["*"],
            "exclude": [],
        },
        {
            "name": "dev02",
            "tracking_uri": "http://127.0.0.1:5002",
            "production": {"alias": "champion"},
        },
    ],
    "client": {"timeout_seconds": 15, "max_retries": 2, "max_workers": 4},
    "sensor": {"minimum_interval_seconds": 60, "default_status": "stopped", "max_workers": 16},
    "schedule": {"cron": "0 2 * * *", "default_status": "running"},
    "freshness": {"deadline": "06:00", "check_cron": "0 * * * *"},
    "checks": {"cron": "0 5 * * *"},
    "automation": {"default_status": "running"},
    "housekeeping": {
        "cron": "0 4 * * 0",
        "debris_retention_hours": 24,
        "vacuum_retention_hours": 168,
    },
}

# Every key path of BASE (lists by index), so mutations hit real keys as well as made-up ones.
PATHS: list[tuple] = []


def _collect(node, prefix: tuple = ()) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            PATHS.append((*prefix, key))
            _collect(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            PATHS.append((*prefix, index))
            _collect(value, (*prefix, index))


_collect(BASE)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "dev01",
            "Dev 01",
            "../x",
            "{workspace}",
            "{model}",
            "{x}",
            "{",
            "0 2 * * *",
            "61 * * * *",
            "http://",
            "s3://bucket/x",
            "file:///tmp/x",
            "2026-02-30",
            "25:00",
            "*",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), values),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
    st.tuples(
        st.just("add"), st.sampled_from([(), *PATHS]), st.tuples(st.text(max_size=12), values)
    ),
)


def _apply(document: dict, kind: str, path: tuple, value) -> dict:
    parent = document
    for part in path[:-1] if kind != "add" else path:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return document  # an earlier mutation removed or replaced this branch
    if kind == "add":
        if isinstance(parent, dict):
            parent[value[0]] = value[1]
        return document
    try:
        if kind == "set":
            parent[path[-1]] = value
        else:
            del parent[path[-1]]
    except (KeyError, IndexError, TypeError):
        pass
    return document


def _load_or_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            config = load_config(path)
        except ConfigError as error:
            assert str(path) in str(error)
            if error.key:
                assert error.key in str(error)
            return
        # A file that loads must also give working definitions (crons, partitions, statuses).
        build_definitions(config)


FUZZ = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_configuration_loads_or_names_the_key(mutations):
    document = copy.deepcopy(BASE)
    for kind, path, value in mutations:
        document = _apply(document, kind, path, value)
    _load_or_config_error(yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_names_the_file(text):
    _load_or_config_error(text)
