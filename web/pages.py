"""The customer-success workbench: server-rendered pages over the worklist views.

``/`` (the worklist, filtered and paged), ``/customers/<id>`` (one customer) and ``/segments``
(per segment, and win-back per playbook), plus ``/login`` for browsers when an API token is set.
Served by the same HTTP server as ``/metrics`` and the JSON API
(:func:`churnwatch.web.server.start_metrics_server`), so ``churnwatch run`` and
``churnwatch serve`` both serve them. Plain HTML and CSS from Jinja2 templates (autoescaped:
every customer-provided string is escaped), no JavaScript, readable at phone width; the score
history chart is an inline SVG drawn here.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from churnwatch.web.worklist import (
    DEFAULT_TIERS,
    BadRequest,
    WorklistAPI,
    customer_detail,
    is_redis_outage,
    parse_worklist_query,
    segments_overview,
    worklist_page,
)
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from churnwatch.core.config import TIERS

log = logging.getLogger("churnwatch.pages")

#: What each score component means, for the customer page.
COMPONENT_MEANINGS = {
    "recency": "How likely they order again within the segment's horizon, given their silence "
               "and their own rhythm of ordering.",
    "trend": "Whether they buy as often and as much lately as in their earlier months.",
    "engagement": "How often they answer messages and campaigns, against other customers.",
    "service": "Support tickets and feedback: low means recent problems or poor ratings.",
}
#: The worklist's tier filter choices: (query value, label).
TIER_CHOICES = (("at_risk,churned", "at risk and churned"), ("at_risk", "at risk"),
                ("churned", "churned"), ("watch", "watch"), ("healthy", "healthy"),
                ("healthy,watch,at_risk,churned", "all tiers"))


def environment() -> Environment:
    """The templates (``churnwatch/web/templates``), autoescaping everything."""
    env = Environment(loader=PackageLoader("churnwatch.web", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    return env


class WorkbenchPages:
    """Renders the pages: ``handle(path, query) -> (status, html)``; the HTTP server does
    authentication (see :mod:`churnwatch.web.auth`)."""

    def __init__(self, api: WorklistAPI) -> None:
        self.api = api
        self.env = environment()

    def render(self, template: str, **context: Any) -> str:
        """One template with its context."""
        return self.env.get_template(template).render(**context)

    def login(self, next_path: str = "/", error: str | None = None) -> str:
        """The login form (``next_path`` is where to go after it)."""
        return self.render("login.html", title="Sign in", next=safe_next(next_path),
                           error=error)

    def handle(self, path: str, query_string: str) -> tuple[int, str]:
        """Answer ``GET path?query_string`` with a page."""
        try:
            params = parse_qs(query_string, keep_blank_values=False)
            if path == "/":
                return 200, self.worklist(params)
            if path.startswith("/customers/"):
                return self.customer(unquote(path[len("/customers/"):]))
            if path in ("/segments", "/segments/"):
                return 200, self.render("segments.html", title="Segments", tiers=TIERS,
                                        overview=segments_overview(self.api.store,
                                                                   self.api.config))
            if path == "/login":
                return 200, self.login(_first(params, "next") or "/")
            return 404, self.error("Not found", f"No page at {path}.")
        except BadRequest as exc:
            return 400, self.error("Bad filter", f"{exc.parameter}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - answer, keep serving
            if is_redis_outage(exc):
                log.warning("pages: Redis unavailable: %s", exc)
                return 503, self.error("Unavailable", "The state store (Redis) is unavailable; "
                                       "retry in a moment.")
            log.exception("pages: %s failed", path)
            return 500, self.error("Internal error", "See the churnwatch log.")

    def error(self, title: str, message: str) -> str:
        """An error page."""
        return self.render("error.html", title=title, message=message)

    def worklist(self, params: Mapping[str, list[str]]) -> str:
        """``/``: the worklist, most urgent first."""
        config = self.api.config
        selected = {"tier": _first(params, "tier") or ",".join(DEFAULT_TIERS),
                    "segment": _first(params, "segment") or "",
                    "value_tier": _first(params, "value_tier") or ""}
        query_params = {k: [v] for k, v in selected.items() if v}
        for key in ("limit", "offset"):
            if key in params:
                query_params[key] = params[key]
        query = parse_worklist_query(query_params, config)
        page = worklist_page(self.api.store, config, query).as_dict()

        def link(offset: int) -> str:
            kept = {k: v for k, v in selected.items() if v}
            return "/?" + urlencode({**kept, "limit": query.limit, "offset": offset})

        previous_url = link(max(query.offset - query.limit, 0)) if query.offset > 0 else None
        next_url = link(page["next_offset"]) if page["next_offset"] is not None else None
        choices = list(TIER_CHOICES)
        if selected["tier"] not in {value for value, _ in choices}:
            choices.append((selected["tier"], selected["tier"].replace(",", ", ")))
        return self.render("worklist.html", title="Worklist", page=page, selected=selected,
                           segments=config.segments, tier_choices=choices,
                           previous_url=previous_url, next_url=next_url)

    def customer(self, customer_id: str) -> tuple[int, str]:
        """``/customers/<id>``: one customer."""
        detail = customer_detail(self.api.store, self.api.config, customer_id)
        if detail is None:
            return 404, self.error("Unknown customer",
                                   f"No customer {customer_id!r} in the state.")
        chart = score_chart(detail["score_history"])
        return 200, self.render("customer.html", title=customer_id, c=detail, chart=chart,
                                meanings=COMPONENT_MEANINGS)


def safe_next(path: str) -> str:
    """Only a local path may follow a login (no open redirect).

    >>> safe_next("/customers/a%2Fb"), safe_next("https://evil.example/"), safe_next("//x")
    ('/customers/a%2Fb', '/', '/')
    """
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _first(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


# -- the score chart ------------------------------------------------------------------------------

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 34, 12, 10, 26


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


#: The colour of a point by the tier it opened (as the tier badges on the pages).
TIER_COLOURS = {"healthy": "#2e8b57", "watch": "#c99a06", "at_risk": "#e07b39",
                "churned": "#c0392b"}


def score_chart(points: Sequence[Mapping[str, Any]]) -> Markup:
    """The score history as an inline SVG: the score at each tier change (every one the state
    keeps, a year's) and now, each point coloured by the tier it opened and titled with its
    date. Tiers follow the calibrated return chance, not the score, so
    no tier bands are drawn on the score's axis. Only numbers and dates go into it.

    >>> svg = score_chart([{"at": "2024-01-01T00:00:00Z", "health_score": 70, "tier": "healthy"},
    ...                    {"at": "2024-03-01T00:00:00Z", "health_score": 30, "tier": "churned"}])
    >>> svg.startswith("<svg") and "<polyline" in svg
    True
    """
    series = [(t, float(p["health_score"]), str(p.get("tier") or "")) for p in points
              if (t := _ts(p.get("at"))) is not None and p.get("health_score") is not None]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(score: float) -> float:
        return TOP + plot_h * (1 - min(max(score, 0.0), 100.0) / 100.0)

    parts = [f'<svg class="chart" id="score-chart" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="health score history">']
    for value in (0, 25, 50, 75, 100):
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#5d6677">{value}</text>')
    if series:
        first, last = series[0][0], series[-1][0]
        span = max(last - first, 1.0)

        def x(ts: float) -> float:
            return LEFT + plot_w * ((ts - first) / span if len(series) > 1 else 0.5)

        coords = " ".join(f"{x(t):.1f},{y(s):.1f}" for t, s, _ in series)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="#2457c5" '
                     f'stroke-width="2"/>')
        for t, s, tier in series:
            colour = TIER_COLOURS.get(tier, "#2457c5")
            name = tier if tier in TIER_COLOURS else "score"
            day = datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")
            parts.append(f'<circle cx="{x(t):.1f}" cy="{y(s):.1f}" r="4.5" fill="{colour}">'
                         f'<title>{name}: {s:.1f} ({day})</title></circle>')
        for ts, anchor in ((first, "start"), (last, "end")):
            label = html.escape(datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d"))
            parts.append(f'<text x="{x(ts) if len(series) > 1 else LEFT + plot_w / 2:.1f}" '
                         f'y="{HEIGHT - 8}" font-size="11" text-anchor="{anchor}" '
                         f'fill="#5d6677">{label}</text>')
    else:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
                     'fill="#5d6677">no score yet</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
