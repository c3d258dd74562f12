"""imdsweb's models: the fleet inventory cache and the change audit trail."""

from .api import ApiToken
from .changes import ChangeBatch, ChangeItem
from .history import DriftEvent, FleetSnapshot, PostureSnapshot
from .inventory import Account, Instance, MetadataDefaults, SyncRun, UsageReading
from .notifications import Delivery, NotificationEvent, NotificationRule
from .organization import AccountHealth, DiscoveryRun, OrganizationSource
from .posture import RegionPosture
from .profile import UserProfile
from .signin import OidcIdentity
from .sources import Image, LaunchSource, LaunchTemplateVersion, SourceSyncState
from .teams import TeamPosture

__all__ = [
    "Account", "AccountHealth", "ApiToken", "ChangeBatch", "ChangeItem", "Delivery", "DriftEvent", "FleetSnapshot", "Image", "Instance", "LaunchSource", "LaunchTemplateVersion", "SourceSyncState",
    "MetadataDefaults", "NotificationEvent", "NotificationRule", "OidcIdentity", "PostureSnapshot", "RegionPosture", "SyncRun", "TeamPosture", "UserProfile",
    "UsageReading", "DiscoveryRun", "OrganizationSource",
]
