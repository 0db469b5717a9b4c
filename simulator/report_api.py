"""Settlement reports: every balance transaction settling in a period, grouped into payouts."""

from __future__ import annotations

from datetime import date

from aiohttp import web

from simulator.errors import error_response
from simulator.keys import SIMULATOR

routes = web.RouteTableDef()


def _date(request: web.Request, name: str) -> date | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{name} must be a date such as 2026-11-30, not {raw!r}") from None


@routes.get("/v1/reports/settlement")
async def settlement_report(request: web.Request) -> web.Response:
    """`?from=YYYY-MM-DD&to=YYYY-MM-DD&format=csv|json`; both dates inclusive and optional."""
    try:
        start, end = _date(request, "from"), _date(request, "to")
    except ValueError as error:
        return error_response(400, str(error), param=str(error).split()[0])
    if start is not None and end is not None and end < start:
        return error_response(400, "to must not be before from", param="to")
    report_format = request.query.get("format", "json")
    if report_format not in ("csv", "json"):
        return error_response(400, f"format must be csv or json, not {report_format!r}", param="format")
    report = request.app[SIMULATOR].settlements.report(start, end)
    if report_format == "json":
        return web.json_response(report.to_json())
    name = f"settlement_{start or 'all'}_{end or 'all'}.csv"
    return web.Response(
        text=report.to_csv(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
