"""The domain's one error base class.

Every error the marketplace raises about its own input or state (a bad configuration, an export
that cannot be trusted, a lost lock, a missing credential) is a `MarketplaceError`, named by the
file, key, workspace or model at fault. The Dagster layer turns it into a step failure that
shows the message without a stack trace; anything else is a bug and keeps its trace.
"""


class MarketplaceError(Exception):
    """An error the marketplace explains in its message."""
