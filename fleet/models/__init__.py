"""imdsweb's models: the fleet inventory cache and the change audit trail."""

from .changes import ChangeBatch, ChangeItem
from .inventory import Account, Instance, MetadataDefaults, SyncRun
from .posture import RegionPosture
from .sources import Image, LaunchSource, LaunchTemplateVersion, SourceSyncState

__all__ = [
    "Account",
    "ChangeBatch",
    "ChangeItem",
    "Image",
    "Instance",
    "LaunchSource",
    "LaunchTemplateVersion",
    "MetadataDefaults",
    "RegionPosture",
    "SourceSyncState",
    "SyncRun",
]
