"""The collected data of a workspace: browse the blobs, preview a CSV, download it, summarize and join a service's
rows. Every view checks membership first; every path is checked against the workspace's prefix."""

from __future__ import annotations

from datetime import date, timedelta

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET

from deployments import blobs, datapaths, datasummary, preview
from deployments.access import get_service_for_user, get_workspace_for_user

PREVIEW_ROWS = (10, 100, 1000)
PAGE_SIZE = 200


def _breadcrumbs(relative: str) -> list[tuple[str, str]]:
    parts = [p for p in relative.strip("/").split("/") if p]
    return [(part, "/".join(parts[: i + 1])) for i, part in enumerate(parts)]


@require_GET
@login_required
def data_browser(request: HttpRequest, workspace_id: int) -> HttpResponse:
    workspace, _ = get_workspace_for_user(request, workspace_id)
    path = request.GET.get("path", "")
    prefix = datapaths.folder(workspace, path)
    token = request.GET.get("token", "")[:1024] or None
    try:
        listing = blobs.list_folder(prefix, page_token=token, page_size=PAGE_SIZE)
    except blobs.BadListing as exc:
        return HttpResponseBadRequest(str(exc))
    context = {
        "workspace": workspace,
        "path": path.strip("/"),
        "breadcrumbs": _breadcrumbs(path),
        "entries": [(entry, datapaths.relative(workspace, entry.name)) for entry in listing.entries],
        "next_token": listing.next_token,
        "nav": "data",
    }
    template = "deployments/data_browser.html" + ("#listing" if request.htmx else "")  # type: ignore[attr-defined]
    return render(request, template, context)


@require_GET
@login_required
def data_preview(request: HttpRequest, workspace_id: int) -> HttpResponse:
    workspace, _ = get_workspace_for_user(request, workspace_id)
    relative = request.GET.get("blob", "")
    name = datapaths.blob(workspace, relative)
    rows = int(request.GET["rows"]) if request.GET.get("rows") in {str(n) for n in PREVIEW_ROWS} else 100
    try:
        first = preview.head(name, rows)
        last = None if first.complete else preview.tail(name, rows, first.header)
    except preview.NotTabular as exc:
        return HttpResponseBadRequest(str(exc))
    folder = relative.rsplit("/", 1)[0] if "/" in relative else ""
    context = {
        "workspace": workspace,
        "blob": relative,
        "breadcrumbs": _breadcrumbs(folder),
        "leaf": relative.rsplit("/", 1)[-1],
        "head": first,
        "tail": last,
        "rows": rows,
        "row_choices": PREVIEW_ROWS,
        "nav": "data",
    }
    return render(request, "deployments/data_preview.html", context)


@require_GET
@login_required
def data_download(request: HttpRequest, workspace_id: int) -> StreamingHttpResponse:
    """The raw blob, streamed through the portal; with `?format=excel`, cells that start a formula neutralized."""
    workspace, _ = get_workspace_for_user(request, workspace_id)
    relative = request.GET.get("blob", "")
    name = datapaths.blob(workspace, relative)
    size, chunks = blobs.stream(name)
    filename = relative.replace("/", "_")
    if request.GET.get("format") == "excel":
        response = StreamingHttpResponse(preview.excel_safe_csv(chunks), content_type="text/csv; charset=utf-8")
        filename = filename.removesuffix(".csv") + "_excel-safe.csv"
    else:
        response = StreamingHttpResponse(chunks, content_type="text/csv; charset=utf-8")
        response["Content-Length"] = str(size)
    response["Content-Disposition"] = content_disposition_header(True, filename)
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_GET
@login_required
def service_data(request: HttpRequest, service_id: int) -> HttpResponse:
    service, _ = get_service_for_user(request, service_id)
    url = reverse("deployments:data-browser", args=[service.workspace_id])
    return redirect(f"{url}?path={service.name}")


@require_GET
@login_required
def service_data_summary(request: HttpRequest, service_id: int) -> HttpResponse:
    service, _ = get_service_for_user(request, service_id)
    today = date.today()
    summary = datasummary.rows_per_day(service, today - timedelta(days=29), today)
    context = {"service": service, "workspace": service.workspace, "summary": summary, "nav": "data"}
    return render(request, "deployments/service_data_summary.html", context)


@require_GET
@login_required
def service_data_join(request: HttpRequest, service_id: int) -> HttpResponse:
    service, _ = get_service_for_user(request, service_id)
    form = datasummary.JoinForm(request.GET or None)
    result = None
    if form.is_valid():
        result = datasummary.join(service, form.cleaned_data["correlation_id"], form.cleaned_data["day"])
    context = {"service": service, "workspace": service.workspace, "form": form, "result": result, "nav": "data"}
    return render(request, "deployments/service_data_join.html", context)
