"""imdsweb's models: the fleet inventory cache and the change audit trail."""

from .changes import ChangeBatch, ChangeItem
from .inventory import Account, Instance, MetadataDefaults, SyncRun
from .organization import AccountHealth, DiscoveryRun, OrganizationSource
from .posture import RegionPosture

__all__ = [
    "Account",
    "AccountHealth",
    "ChangeBatch",
    "ChangeItem",
    "DiscoveryRun",
    "Instance",
    "MetadataDefaults",
    "OrganizationSource",
    "RegionPosture",
    "SyncRun",
]
