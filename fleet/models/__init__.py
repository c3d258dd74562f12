"""imdsweb's models: the fleet inventory cache and the change audit trail."""

from .changes import ChangeBatch, ChangeItem
from .inventory import Account, Instance, MetadataDefaults, SyncRun
from .posture import RegionPosture
from .signin import OidcIdentity

__all__ = ["Account", "ChangeBatch", "ChangeItem", "Instance", "MetadataDefaults", "OidcIdentity", "RegionPosture", "SyncRun"]
