"""Many workspaces spread round robin over the demo's source servers (`make demo` starts them)."""

from __future__ import annotations

from marketplace.config import load_config


def demo_workspaces(count: int) -> list[dict]:
    """`count` workspace entries (w000, w001, ...), each on one of the demo's servers, selecting
    production as that demo workspace does: several share one server, each owning its models."""
    demo = load_config().workspaces
    return [
        {
            "name": f"w{i:03d}",
            "tracking_uri": demo[i % len(demo)].tracking_uri,
            "production": demo[i % len(demo)].production.model_dump(exclude_none=True),
        }
        for i in range(count)
    ]
