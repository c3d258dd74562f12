"""Template helpers: posture colours, percentages and the server-rendered SVG charts."""

from django import template
from django.utils import formats, timezone

from ..choices import Risk, aws_options
from ..posture import posture_level

register = template.Library()


@register.filter
def level(pct):
    """good / warn / bad / none, for CSS classes."""
    return posture_level(pct)


@register.filter
def pct(value):
    return "—" if value is None else f"{value:g}%"


@register.filter
def options(value):
    """A desired/previous dict as ``HttpTokens=required, …`` (AWS's parameter names)."""
    if not value:
        return "—"
    return aws_options(value)


ROW_HEIGHT = 24
LABEL_WIDTH = 160
BAR_WIDTH = 300


@register.inclusion_tag("fleet/charts/hbars.html")
def compliance_bars(accounts):
    """One horizontal bar per account: share of present instances with IMDSv2 enforced."""
    bars = [
        {
            "label": account["name"],
            "title": f"{account['name']} ({account['account_id']}): {account['enforced']} of {account['total']} enforced",
            "y": index * ROW_HEIGHT,
            "width": round(BAR_WIDTH * (account["enforced_pct"] or 0) / 100, 1),
            "pct": account["enforced_pct"],
            "level": posture_level(account["enforced_pct"]),
        }
        for index, account in enumerate(accounts)
    ]
    return {
        "bars": bars, "height": max(len(bars), 1) * ROW_HEIGHT, "label_width": LABEL_WIDTH, "bar_width": BAR_WIDTH,
        "total_width": LABEL_WIDTH + BAR_WIDTH + 60,
    }


@register.inclusion_tag("fleet/charts/vbars.html")
def hop_limit_bars(distribution):
    """Vertical bars: instances per hop limit (1 is the safe default; > 1 needs a reason)."""
    width, height, gap = 44, 120, 10
    peak = max((n for _, n in distribution), default=0) or 1
    bars = []
    for index, (hops, n) in enumerate(distribution):
        bar_height = round(height * n / peak, 1)
        bars.append({
            "label": "?" if hops is None else hops,
            "n": n,
            "x": index * (width + gap),
            "y": height - bar_height,
            "height": bar_height,
            "width": width,
            "level": "neutral" if hops == 1 else "warn",
        })
    return {"bars": bars, "height": height, "total_width": max(len(bars), 1) * (width + gap), "width": width}


@register.filter
def risk_label(value):
    """A ``Risk`` value as its words ("IAM role + public IP")."""
    return Risk(value).label if value in Risk.values else value


@register.filter
def get_item(mapping, key):
    """``{{ links|get_item:bucket }}``: a dict lookup by a variable key."""
    return (mapping or {}).get(key, "")

@register.filter
def profile_name(arn):
    """An instance profile ARN's name (the part after ``instance-profile/`` and any path)."""
    return (arn or "").rsplit("/", 1)[-1]


# ---- the burndown (fleet.history)

LINE_WIDTH, LINE_HEIGHT, LINE_LEFT, LINE_BOTTOM = 560, 140, 48, 22


@register.inclusion_tag("fleet/charts/line.html")
def burndown_line(points, markers, start, series, label):
    """One series of the burndown as an SVG polyline over [start, now], with a dashed line per
    change batch. ``series`` is ``enforced_pct`` (0–100 %) or ``allowing_v1`` (0–peak)."""
    end = points[-1].at if points else start
    span = max((end - start).total_seconds(), 1)
    values = [getattr(point, series) for point in points]
    peak = 100 if series == "enforced_pct" else max([v for v in values if v is not None] + [1])

    def x(at):
        return round(LINE_LEFT + LINE_WIDTH * max((at - start).total_seconds(), 0) / span, 1)

    def y(value):
        return round(LINE_HEIGHT - LINE_HEIGHT * value / peak, 1)

    plotted = [(x(point.at), y(value), point, value) for point, value in zip(points, values, strict=True)
               if value is not None]
    suffix = "%" if series == "enforced_pct" else ""

    def when(at):  # the site's one date format, in the user's time zone (fleet.profile)
        return formats.date_format(timezone.localtime(at), "SHORT_DATETIME_FORMAT")

    return {
        "label": label,
        "polyline": " ".join(f"{px},{py}" for px, py, _, _ in plotted),
        "dots": [{"x": px, "y": py, "title": f"{when(point.at)}: {value:g}{suffix}"}
                 for px, py, point, value in plotted],
        "markers": [{"x": x(batch.created_at), "title": f"batch #{batch.pk} at {when(batch.created_at)}",
                     "url": batch.get_absolute_url()} for batch in markers],
        "dot_radius": 2.5 if len(plotted) <= 60 else 1.2,
        "peak": f"{peak:g}{suffix}", "left": LINE_LEFT, "right": LINE_LEFT + LINE_WIDTH, "height": LINE_HEIGHT,
        "total_width": LINE_LEFT + LINE_WIDTH + 8, "total_height": LINE_HEIGHT + LINE_BOTTOM,
        "start": start, "end": end, "series": series,
    }


@register.simple_tag
def instance_rows(rows, owner_tag):
    """The instance list's rows (fleet.tables.instance_rows)."""
    from ..tables import instance_rows as write

    return write(rows, owner_tag)
