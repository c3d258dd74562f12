"""The sweeper: the rows, not the broker, are the truth. Items a dead worker left in submitting
go back to the queue, and every account/region with queued items and no runner gets one: none
running there and none queued for it (``RegionLock.attended``), so that a runner waiting for
AWS's refill does not get a second one every round."""

import logging

from django.conf import settings
from django.utils import timezone

from ..models import ChangeItem
from .locks import RegionLock

log = logging.getLogger(__name__)


def sweep():
    """Return abandoned items to the queue and make sure every queued region has a runner.

    Returns the (account pk, region) pairs that need a runner now.
    """
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.IMDSWEB_SUBMIT_TIMEOUT_SECONDS)
    returned = ChangeItem.objects.return_abandoned(cutoff)
    if returned:
        log.warning("sweeper: %d item(s) left in submitting by a dead worker are queued again", returned)
    queued = (
        ChangeItem.objects.claimable().values_list("account_id", "region").distinct().order_by()
    )
    return [(account_pk, region) for account_pk, region in queued if not RegionLock.attended(account_pk, region)]
