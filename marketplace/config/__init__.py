"""The deployment configuration: one YAML file, validated on load, naming the file and key at fault.

One module per section (`storage`, `marketplace`, `workspaces`, `security`, `gate`, `operations`),
`deployment` for the whole file and `files` for reading it. Settings only: what the rest of the
marketplace builds from them lives with the code that uses it.
"""

from marketplace.config.base import ConfigError
from marketplace.config.connections import DatabricksConnection
from marketplace.config.deployment import MarketplaceConfig, UnknownWorkspace
from marketplace.config.files import CONFIG_ENV_VAR, load_config, parse_config
from marketplace.config.gate import EvaluationRule, GateConfig
from marketplace.config.marketplace import PERMISSIONS, MarketplaceRegistryConfig
from marketplace.config.operations import HousekeepingConfig
from marketplace.config.security import SecurityConfig
from marketplace.config.storage import ExternalStorageConfig
from marketplace.config.workspaces import ExportEngineConfig, WorkspaceConfig

__all__ = [
    "CONFIG_ENV_VAR",
    "PERMISSIONS",
    "ConfigError",
    "DatabricksConnection",
    "EvaluationRule",
    "ExportEngineConfig",
    "ExternalStorageConfig",
    "GateConfig",
    "HousekeepingConfig",
    "MarketplaceConfig",
    "MarketplaceRegistryConfig",
    "SecurityConfig",
    "UnknownWorkspace",
    "WorkspaceConfig",
    "load_config",
    "parse_config",
]
