"""imdsweb's models: the fleet inventory cache and the change audit trail."""

from .changes import ChangeBatch, ChangeItem
from .inventory import Account, Instance, MetadataDefaults, SyncRun, UsageReading
from .posture import RegionPosture

__all__ = ["Account", "ChangeBatch", "ChangeItem", "Instance", "MetadataDefaults", "RegionPosture", "SyncRun", "UsageReading"]
