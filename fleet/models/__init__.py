"""imdsweb's models: the fleet inventory cache and the change audit trail."""

from .api import ApiToken
from .changes import ChangeBatch, ChangeItem
from .history import DriftEvent, FleetSnapshot, PostureSnapshot
from .inventory import Account, Instance, MetadataDefaults, RegionSync, SyncRun, UsageReading
from .notifications import Delivery, NotificationEvent, NotificationRule
from .organization import AccountHealth, DiscoveryRun, OrganizationSource
from .posture import HopLimitCount, RegionPosture
from .profile import UserProfile
from .rollout import BatchEvent
from .signin import OidcIdentity
from .sources import Image, LaunchSource, LaunchTemplateVersion, SourceSyncState
from .teams import TeamPosture
from .waivers import Waiver, WaiverEvent

__all__ = [
    "Account", "AccountHealth", "ApiToken", "BatchEvent", "ChangeBatch", "ChangeItem", "Delivery", "DriftEvent", "FleetSnapshot", "Image", "Instance", "LaunchSource", "LaunchTemplateVersion", "SourceSyncState",
    "MetadataDefaults", "NotificationEvent", "NotificationRule", "OidcIdentity", "PostureSnapshot", "HopLimitCount", "RegionPosture", "RegionSync", "SyncRun", "TeamPosture", "UserProfile",
    "UsageReading", "DiscoveryRun", "OrganizationSource", "Waiver", "WaiverEvent",
]
