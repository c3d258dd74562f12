"""The overview's heat map at organization scale: one OU level at a time, accounts a page at a time.

At 200 accounts x 17 regions a single matrix is 3,400 cells: too slow to render inside the
overview's budget and too big to read. So the map shows the scope the user drilled into (the
root, or an OU): one row per child OU (its accounts summed) and one row per account directly in
the scope, ``ACCOUNTS_PER_PAGE`` at a time; columns are the regions that have instances in the
scope. Everything comes from the posture summary rows (``RegionPosture``) in five queries,
whatever the number of accounts. Without OUs (accounts registered by hand) it is the plain
account x region matrix, paged.
"""

from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote, urlencode

from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Sum
from django.urls import reverse
from django.utils.safestring import mark_safe

from .filters import ou_q
from .models import Account, RegionPosture
from .posture import percent, posture_level

ACCOUNTS_PER_PAGE = 50
FIGURES = ("total", "enforced", "enforced_applied", "terminated", "shutting_down")


@dataclass
class ScopedHeatMap:
    ou: str  # "" = the root
    regions: list[str] = field(default_factory=list)
    # {"kind": "ou" | "account", "name", "account_id", "ou_path", "accounts", "cells", FIGURES..., "level"}
    rows: list[dict] = field(default_factory=list)
    page: object = None  # the accounts' Paginator page
    breadcrumb: list[tuple[str, str]] = field(default_factory=list)  # [(label, ou path)]

    @property
    def ou_rows(self):
        return [row for row in self.rows if row["kind"] == "ou"]

    @property
    def account_rows(self):
        return [row for row in self.rows if row["kind"] == "account"]


def _child(ou, path):
    """The child OU of scope ``ou`` that ``path`` is in, or "" when ``path`` is the scope itself."""
    rest = path[len(ou) + 1:] if ou else path
    if not rest:
        return ""
    head = rest.split("/", 1)[0]
    return f"{ou}/{head}" if ou else head


def _texts(figures):
    """The figures as the cell shows them, formatted once here: at 850 cells a page, template
    filters (intcomma, pct) and lookups were most of the overview's time."""
    figures["enforced_pct"] = pct = percent(figures["enforced"], figures["total"])
    figures["level"] = posture_level(pct)
    figures["pct_text"] = "—" if pct is None else f"{pct:g}%"
    figures["total_text"] = f"{figures['total']:,}"
    not_counted = figures["terminated"] + figures["shutting_down"]
    figures["title"] = (f"{figures['enforced']:,} of {figures['total']:,} enforced; {figures['enforced_applied']:,} applied"
                        + (f"; {not_counted:,} terminated or shutting down, not counted" if not_counted else ""))


EMPTY_CELL = '<td class="heat heat-none">—</td>'


def _cell_html(figures, href):
    # Every interpolated value is escaped here (href is escaped by the caller); the texts are ours.
    # posture=counted: the list then shows exactly the cell's total (terminated ones apart).
    return (f'<td class="heat heat-{figures["level"]}"><a href="{href}&amp;posture=counted" '
            f'data-count="{figures["total"]}" title="{figures["title"]}">'
            f'{figures["pct_text"]}<small>{figures["total_text"]}</small></a></td>')


def _finish(row, regions, list_url):
    """Figures and texts of the row and its cells, and the cells' HTML: one string per row, as
    850 cells through the template engine (or format_html) cost more than the page's budget."""
    scope = urlencode({"ou": row["ou_path"]} if row["kind"] == "ou" else {"account": row["account_id"]})
    base = escape(f"{list_url}?{scope}")
    row["cells"], html = [], []
    for region in regions:
        cell = row["by_region"].get(region)
        if cell is None:
            html.append(EMPTY_CELL)
        else:
            _texts(cell)
            html.append(_cell_html(cell, f"{base}&amp;region={escape(quote(region))}"))
        row["cells"].append(cell)
    _texts(row)
    html.append(_cell_html(row, base))
    row["cells_html"] = mark_safe("".join(html))
    row["enforced_applied_pct"] = percent(row["enforced_applied"], row["total"])
    return row


def _new_row(**values):
    return {**values, "by_region": {}, **dict.fromkeys(FIGURES, 0)}


def _add(row, region, figures):
    cell = row["by_region"].setdefault(region, {"region": region, **dict.fromkeys(FIGURES, 0)})
    for key in FIGURES:
        cell[key] += figures[key]
        row[key] += figures[key]


def scoped_heat_map(ou="", page_number=1, per_page=ACCOUNTS_PER_PAGE):
    ou = (ou or "").strip("/")
    scope = RegionPosture.objects.filter(total__gt=0).order_by()
    if ou:
        scope = scope.filter(ou_q(ou, "account__"))
    sums = {key: Sum(key) for key in FIGURES}
    by_path_region = scope.values("account__ou_path", "region").annotate(**sums)
    accounts_by_path = dict(
        scope.values("account__ou_path").annotate(n=Count("account_id", distinct=True))
        .values_list("account__ou_path", "n")
    )

    heat = ScopedHeatMap(ou=ou)
    parts = ou.split("/") if ou else []
    heat.breadcrumb = [("/".join(parts[: n + 1]).rsplit("/", 1)[-1], "/".join(parts[: n + 1])) for n in range(len(parts))]
    regions, ou_rows = set(), {}
    for row in by_path_region:
        regions.add(row["region"])
        child = _child(ou, row["account__ou_path"])
        if child:
            target = ou_rows.setdefault(child, _new_row(kind="ou", name=child.rsplit("/", 1)[-1], ou_path=child,
                                                        account_id="", accounts=0))
            _add(target, row["region"], row)
    for path, n in accounts_by_path.items():
        child = _child(ou, path)
        if child:
            ou_rows[child]["accounts"] += n
    heat.regions = sorted(regions)

    # EXISTS, not a join and DISTINCT: the database stops at an account's first non-empty summary row.
    has_instances = Exists(RegionPosture.objects.filter(account=OuterRef("pk"), total__gt=0))
    accounts = Account.objects.filter(has_instances, ou_path=ou).order_by("name", "account_id")
    heat.page = Paginator(accounts.values("pk", "account_id", "name"), per_page).get_page(page_number)
    account_rows = {
        a["pk"]: _new_row(kind="account", name=a["name"], account_id=a["account_id"], ou_path=ou, accounts=1)
        for a in heat.page
    }
    for row in scope.filter(account_id__in=list(account_rows)).values("account_id", "region", *FIGURES):
        _add(account_rows[row["account_id"]], row["region"], row)

    list_url = reverse("fleet:instance_list")
    heat.rows = [_finish(row, heat.regions, list_url) for _, row in sorted(ou_rows.items())]
    heat.rows += [_finish(row, heat.regions, list_url) for row in account_rows.values()]
    return heat
