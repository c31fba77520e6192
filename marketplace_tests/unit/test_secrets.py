"""A canary secret in the configuration's environment and URIs never reaches any output."""

from __future__ import annotations

import pytest

from marketplace.registry import redact_text


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "request to http://user:pw@host:5000/api failed",
            "request to http://host:5000/api failed",
        ),
        ("https://token@adb-1.azuredatabricks.net/x", "https://adb-1.azuredatabricks.net/x"),
        ("two: http://a:b@h1/ and https://c@h2", "two: http://h1/ and https://h2"),
        ("no URL, user@example.com", "no URL, user@example.com"),
        ("s3://bucket/key@version", "s3://bucket/key@version"),
    ],
)
def test_redact_text_removes_user_info_from_every_url(text, expected):
    assert redact_text(text) == expected
