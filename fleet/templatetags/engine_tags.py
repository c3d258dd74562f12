"""Template tags about the change engine itself (not the fleet): is a worker taking work?"""

from django import template

from .. import workers

register = template.Library()


@register.inclusion_tag("fleet/partials/worker_alert.html")
def worker_alert(batch=None):
    """A plain message when items are queued and no worker has taken work for a minute
    (``IMDSWEB_WORKER_STALL_SECONDS``); nothing otherwise. ``batch``: count only its items."""
    return {"stall": workers.stalled(batch=batch), "batch": batch}
