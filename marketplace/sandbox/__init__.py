"""Loading a source's model only inside a sandbox: its own namespaces, no network, no credential,
an audit hook, limits; results come back as data. `inside/` is the code that runs there."""

from marketplace.sandbox.boundary import SandboxUnavailable
from marketplace.sandbox.session import Sandbox, SandboxResult
from marketplace.sandbox.settings import SandboxSettings

__all__ = ["Sandbox", "SandboxResult", "SandboxSettings", "SandboxUnavailable"]
