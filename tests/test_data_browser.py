"""The collected-data pages, on rows that the real collector wrote to Azurite."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from django.test import Client
from django.urls import reverse

import collector
from deployments import datasummary, preview
from deployments.models import Service, Workspace
from tests.conftest import collect_rows
from tests.factories import ServiceFactory

TODAY = datetime.now(UTC)
DAY = TODAY.strftime("%Y/%m/%d")


@pytest.fixture
def service(workspace: Workspace) -> Service:
    return ServiceFactory(workspace=workspace, name="churn", collect_model_data=True)


def _inputs_blob() -> str:
    return f"churn/best_model/1/inputs/{DAY}/data.csv"


def _browse(client: Client, workspace: Workspace, path: str = "", **params: str) -> Any:
    return client.get(reverse("deployments:data-browser", args=[workspace.pk]), {"path": path, **params})


def _preview(client: Client, workspace: Workspace, blob: str, **params: str) -> Any:
    return client.get(reverse("deployments:data-preview", args=[workspace.pk]), {"blob": blob, **params})


def test_it_navigates_by_prefix_down_to_the_day(
    client: Client, alice: Any, workspace: Workspace, collecting: None
) -> None:
    collect_rows([[30, "basic"]])
    client.force_login(alice)

    assert b">churn/</a>" in _browse(client, workspace).content
    assert b">inputs/</a>" in _browse(client, workspace, "churn/best_model/1").content
    day = _browse(client, workspace, f"churn/best_model/1/inputs/{DAY}")
    assert b">data.csv</a>" in day.content
    assert f'?blob={_inputs_blob()}"'.encode() in day.content
    # Breadcrumbs back up each level.
    assert b'?path=churn/best_model/1/inputs"' in day.content


def test_it_pages_a_large_folder_with_continuation_tokens(
    client: Client, alice: Any, workspace: Workspace, blob_container: ContainerClient, monkeypatch: Any
) -> None:
    from deployments import data_views

    monkeypatch.setattr(data_views, "PAGE_SIZE", 5)
    for i in range(12):
        blob_container.upload_blob(f"{workspace.path}/many/f{i:02}.csv", b"a\n1\n")
    client.force_login(alice)

    first = _browse(client, workspace, "many")
    token = first.context["next_token"]
    second = _browse(client, workspace, "many", token=token)
    third = _browse(client, workspace, "many", token=second.context["next_token"])

    assert [e.leaf for e, _ in first.context["entries"]] == [f"f{i:02}.csv" for i in range(5)]
    assert [e.leaf for e, _ in third.context["entries"]] == ["f10.csv", "f11.csv"]
    assert third.context["next_token"] is None
    assert b"Next page" in first.content


def test_it_previews_the_head_with_types_and_empty_counts(
    client: Client, alice: Any, workspace: Workspace, collecting: None
) -> None:
    collect_rows([[30, "basic"], [55, ""], [41, "pro"]])
    client.force_login(alice)

    response = _preview(client, workspace, _inputs_blob())

    head = response.context["head"]
    assert head.header[:3] == ["age", "plan", "$aml_dc_correlation_id"]
    assert [r[:2] for r in head.rows] == [["30", "basic"], ["55", ""], ["41", "pro"]]
    columns = {c.name: (c.type, c.empty) for c in head.columns}
    assert columns["age"] == ("number", 0)
    assert columns["plan"] == ("text", 1)
    assert response.context["tail"] is None  # the whole file fit in the preview


def test_it_previews_head_and_tail_of_a_large_file_reading_only_those_bytes(
    client: Client, alice: Any, workspace: Workspace, blob_container: ContainerClient
) -> None:
    body = "i,x\n" + "".join(f"{i},{'y' * 50}\n" for i in range(200_000))  # about 11 MB
    blob_container.upload_blob(f"{workspace.path}/big/data.csv", body.encode())
    client.force_login(alice)

    response = _preview(client, workspace, "big/data.csv", rows="10")

    head, tail = response.context["head"], response.context["tail"]
    assert [r[0] for r in head.rows] == [str(i) for i in range(10)]
    assert [r[0] for r in tail.rows] == [str(i) for i in range(199_990, 200_000)]
    assert head.bytes_read + tail.bytes_read <= 2 * 64 * 1024
    assert head.size == len(body)


def test_it_escapes_cells_headers_and_blob_names(
    client: Client, alice: Any, workspace: Workspace, blob_container: ContainerClient
) -> None:
    name = "<img src=x onerror=alert(1)>.csv"
    blob_container.upload_blob(f"{workspace.path}/x/{name}", b'"<script>h</script>",b\n"<script>alert(1)</script>",2\n')
    client.force_login(alice)

    listing = _browse(client, workspace, "x")
    page = _preview(client, workspace, f"x/{name}")

    assert b"&lt;img src=x onerror=alert(1)&gt;.csv" in listing.content
    assert b"<img" not in listing.content
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in page.content
    assert b"&lt;script&gt;h&lt;/script&gt;" in page.content
    assert b"<script>alert" not in page.content
    assert b"<script>h" not in page.content


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../other-ws",
        "churn/../../x",
        "churn/./x",
        "/..",
        "churn//x",
        "a\\..\\b",
        "%2e%2e/x",
        "%252e%252E/x",
        "churn%2F..%2F..",
        "churn/\x00x",
    ],
)
def test_it_refuses_paths_outside_the_workspace(
    client: Client, alice: Any, workspace: Workspace, blob_container: Any, path: str
) -> None:
    client.force_login(alice)

    assert _browse(client, workspace, path).status_code == 404
    assert _preview(client, workspace, path).status_code == 404
    download = client.get(reverse("deployments:data-download", args=[workspace.pk]), {"blob": path})
    assert download.status_code == 404


def test_outsiders_get_404_and_no_data(
    client: Client, charlie: Any, workspace: Workspace, service: Service, collecting: None
) -> None:
    collect_rows([[30, "basic"]])
    client.force_login(charlie)

    assert _browse(client, workspace).status_code == 404
    assert _preview(client, workspace, _inputs_blob()).status_code == 404
    assert (
        client.get(reverse("deployments:data-download", args=[workspace.pk]), {"blob": _inputs_blob()}).status_code
        == 404
    )
    assert client.get(reverse("deployments:service-data-summary", args=[service.pk])).status_code == 404
    assert client.get(reverse("deployments:service-data-join", args=[service.pk])).status_code == 404


def test_it_downloads_the_raw_blob_streamed(client: Client, bob: Any, workspace: Workspace, collecting: None) -> None:
    collect_rows([[30, "basic"], [50, "pro"]])
    client.force_login(bob)

    response = client.get(reverse("deployments:data-download", args=[workspace.pk]), {"blob": _inputs_blob()})

    assert response.streaming
    body = b"".join(response.streaming_content).decode()
    assert body.startswith("age,plan,$aml_dc_correlation_id")
    assert len(body.splitlines()) == 3
    assert response["Content-Length"] == str(len(body.encode()))
    assert "attachment" in response["Content-Disposition"]


def test_it_exports_excel_safe_csv(
    client: Client, alice: Any, workspace: Workspace, blob_container: ContainerClient
) -> None:
    rows = [["a", "b", "c"], ["=1+2", "-1.5", "+SUM(A1)"], ["@cmd", "\tx", "plain"], ["-2", "1e5", "-x"]]
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    blob_container.upload_blob(f"{workspace.path}/f/data.csv", out.getvalue().encode())
    client.force_login(alice)

    response = client.get(
        reverse("deployments:data-download", args=[workspace.pk]), {"blob": "f/data.csv", "format": "excel"}
    )

    exported = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert exported == [
        ["a", "b", "c"],
        ["'=1+2", "-1.5", "'+SUM(A1)"],
        ["'@cmd", "'\tx", "plain"],
        ["-2", "1e5", "'-x"],
    ]


def test_it_joins_the_input_and_prediction_rows_of_one_request(
    client: Client, alice: Any, service: Service, collecting: None
) -> None:
    ids = collect_rows([[30, "basic"], [55, "pro"], [41, "pro"]])
    client.force_login(alice)

    response = client.get(
        reverse("deployments:service-data-join", args=[service.pk]),
        {"correlation_id": ids[1], "day": TODAY.strftime("%Y-%m-%d")},
    )

    rows = response.context["result"].rows
    assert [row["age"] for row in rows["inputs"].as_dicts()] == ["55"]
    assert [row["churn"] for row in rows["predictions"].as_dicts()] == ["1"]
    assert rows["predictions"].as_dicts()[0]["$aml_dc_correlation_id"] == ids[1]


def test_it_joins_every_row_of_a_request_by_its_correlation_id_or_its_request_id(
    client: Client, alice: Any, service: Service, collecting: None
) -> None:
    inputs = collector.ModelDataCollector("best_model", designation="inputs", feature_names=["age", "plan"])
    predictions = collector.ModelDataCollector("best_model", designation="predictions", feature_names=["churn"])
    for request_id, batch in (("req-1", [[30, "basic"]]), ("req-2", [[55, "pro"], [41, "pro"]]), ("req-3", [[9, "x"]])):
        with collector.request_context(request_id):
            correlations = inputs.collect(batch)
            churn = [[int(age > 40)] for age, _ in batch]
            predictions.collect(predictions.add_correlations(churn, correlations))
        if request_id == "req-2":
            correlation_id = correlations["$aml_dc_correlation_id"]
    assert collector.flush(20)
    client.force_login(alice)

    for key in (correlation_id, "req-2"):
        response = client.get(
            reverse("deployments:service-data-join", args=[service.pk]),
            {"correlation_id": key, "day": TODAY.strftime("%Y-%m-%d")},
        )

        rows = response.context["result"].rows
        assert [(row["age"], row["plan"]) for row in rows["inputs"].as_dicts()] == [("55", "pro"), ("41", "pro")]
        assert [row["churn"] for row in rows["predictions"].as_dicts()] == ["1", "1"]
        assert b"(2 rows)" in response.content
        assert b"row 2" in response.content


def test_a_request_id_that_matches_many_rows_shows_the_first_few_and_says_so(
    client: Client, alice: Any, service: Service, collecting: None, settings: Any
) -> None:
    inputs = collector.ModelDataCollector("best_model", designation="inputs", feature_names=["age", "plan"])
    with collector.request_context("always-the-same"):
        for age in range(datasummary.JOIN_MAX_ROWS + 10):
            inputs.collect([[age, "basic"]])
    assert collector.flush(20)
    client.force_login(alice)

    response = client.get(
        reverse("deployments:service-data-join", args=[service.pk]),
        {"correlation_id": "always-the-same", "day": TODAY.strftime("%Y-%m-%d")},
    )

    matches = response.context["result"].rows["inputs"]
    assert [row["age"] for row in matches.as_dicts()] == [str(a) for a in range(datasummary.JOIN_MAX_ROWS)]
    assert f"(the first {datasummary.JOIN_MAX_ROWS} rows)".encode() in response.content


def test_it_charts_rows_per_day_and_designation(client: Client, alice: Any, service: Service, collecting: None) -> None:
    collect_rows([[20 + i, "basic"] for i in range(7)])
    client.force_login(alice)

    response = client.get(reverse("deployments:service-data-summary", args=[service.pk]))

    series = {s.designation: s for s in response.context["summary"].series}
    assert series["inputs"].counts[-1] == 7
    assert series["predictions"].counts[-1] == 7
    assert series["inputs"].total == 7
    assert b"(7 rows)" in response.content
    assert b"<svg" in response.content
    assert f"{TODAY:%Y-%m-%d}: 7 rows".encode() in response.content


def test_predictions_of_another_width_count_and_join_from_their_own_file(
    client: Client, alice: Any, service: Service, collecting: None
) -> None:
    inputs = collector.ModelDataCollector("best_model", designation="inputs", feature_names=["age"])
    predictions = collector.ModelDataCollector("best_model", designation="predictions", feature_names=["churn"])
    ids = []
    for batch in ([[30]], [[41], [52]], [[20]]):  # a 1-D prediction per request: one row of as many cells
        correlations = inputs.collect(batch)
        predictions.collect(predictions.add_correlations([int(a > 40) for (a,) in batch], correlations))
        ids.append(correlations["$aml_dc_correlation_id"])
    assert collector.flush(20)
    client.force_login(alice)

    summary = client.get(reverse("deployments:service-data-summary", args=[service.pk]))
    join = client.get(
        reverse("deployments:service-data-join", args=[service.pk]),
        {"correlation_id": ids[1], "day": TODAY.strftime("%Y-%m-%d")},
    )

    assert {s.designation: s.total for s in summary.context["summary"].series}["predictions"] == 3
    assert [row["feature_2"] for row in join.context["result"].rows["predictions"].as_dicts()] == ["1"]


def test_the_summary_counts_each_shape_of_rows_by_its_own_row_size(
    client: Client, alice: Any, service: Service, collecting: None
) -> None:
    inputs = collector.ModelDataCollector("best_model", designation="inputs", feature_names=["age"])
    predictions = collector.ModelDataCollector("best_model", designation="predictions", feature_names=["churn"])
    for n in [1] * 10 + [60] * 10:  # requests of 1 and of 60 inputs: prediction rows of 1 and of 60 values
        correlations = inputs.collect([[i] for i in range(n)])
        predictions.collect(predictions.add_correlations([0.123456789 * i for i in range(n)], correlations))
    assert collector.flush(20)
    client.force_login(alice)

    summary = client.get(reverse("deployments:service-data-summary", args=[service.pk]))

    totals = {s.designation: s.total for s in summary.context["summary"].series}
    assert totals == {"inputs": 10 + 600, "predictions": 20}


def test_a_service_links_to_its_own_data(client: Client, alice: Any, service: Service) -> None:
    client.force_login(alice)

    response = client.get(reverse("deployments:service-data", args=[service.pk]))

    assert response["Location"] == reverse("deployments:data-browser", args=[service.workspace_id]) + "?path=churn"


def test_it_previews_rows_with_cells_over_128_kib(
    client: Client, alice: Any, workspace: Workspace, blob_container: ContainerClient
) -> None:
    image = "A" * 300_000  # a base64 image, say
    blob_container.upload_blob(f"{workspace.path}/img/data.csv", f"id,image\n1,{image}\n2,{image}\n".encode())
    client.force_login(alice)

    response = _preview(client, workspace, "img/data.csv")

    assert response.status_code == 200
    assert [r[0] for r in response.context["head"].rows] == ["1", "2"]


def test_it_never_shows_a_row_cut_inside_a_quoted_cell(
    client: Client, alice: Any, workspace: Workspace, blob_container: ContainerClient
) -> None:
    # Quoted cells with newlines, so that the first ranged read ends inside one of them.
    rows = "".join(f'{i},"line one\nline two {i}"\n' for i in range(5000))
    blob_container.upload_blob(f"{workspace.path}/q/data.csv", f"i,text\n{rows}".encode())
    client.force_login(alice)

    head = _preview(client, workspace, "q/data.csv", rows="1000").context["head"]

    assert len(head.rows) == 1000
    assert all(r[1] == f"line one\nline two {r[0]}" for r in head.rows)


def test_the_tail_starts_at_a_whole_row_even_when_its_range_starts_inside_a_quoted_cell(
    client: Client, alice: Any, workspace: Workspace, blob_container: ContainerClient
) -> None:
    # Rows of 660 bytes whose second cell holds a quoted newline (and escaped quotes): the last 64 KiB of the file
    # hold 99 whole rows and the end of the row before, cut inside its quoted cell, before the cell's newline.
    # Reading from the first newline of the range would show that cell's second line as the first of 100 rows.
    def row(i: int) -> str:
        return f'{i:05d},"{"a" * 543}""q""\n{"b" * 100}",x\n'

    assert len(row(0)) == 660
    assert 99 * 660 < 64 * 1024 - 105 < 100 * 660 - 105  # the range starts before the cell's newline
    body = "i,text,y\n" + "".join(row(i) for i in range(1000))
    blob_container.upload_blob(f"{workspace.path}/q/data.csv", body.encode())
    client.force_login(alice)

    tail = _preview(client, workspace, "q/data.csv").context["tail"]

    assert [r[0] for r in tail.rows] == [f"{i:05d}" for i in range(900, 1000)]
    assert all(r[1] == f'{"a" * 543}"q"\n{"b" * 100}' and r[2] == "x" for r in tail.rows)


def test_the_excel_export_keeps_characters_split_across_chunks(monkeypatch: Any) -> None:

    data = "name,city\nrené,Zürich\n".encode()
    chunks = [data[: data.index("é".encode()) + 1], data[data.index("é".encode()) + 1 :]]  # splits the é

    assert b"".join(preview.excel_safe_csv(chunks)).decode() == "name,city\nrené,Zürich\n"


def test_a_forged_page_token_is_never_a_500(
    client: Client, alice: Any, workspace: Workspace, blob_container: ContainerClient
) -> None:
    blob_container.upload_blob(f"{workspace.path}/many/a.csv", b"a\n")
    client.force_login(alice)

    response = _browse(client, workspace, "many", token="!!not-a-token!!" * 10)

    assert response.status_code in (200, 400)  # Azurite treats an unknown marker as a name to start after
    assert response.status_code != 500


def test_a_day_folder_that_is_not_a_date_is_left_out_of_the_summary_and_the_join(
    client: Client, alice: Any, service: Service, collecting: None, blob_container: ContainerClient
) -> None:
    # Any scoring code with the storage key can write such a name; the pages must not fail on it.
    collect_rows([[30, "basic"]])
    blob_container.upload_blob(
        f"{service.workspace.path}/churn/best_model/1/inputs/{TODAY:%Y/%m}/99/data.csv", b"age,plan\n1,x\n"
    )
    client.force_login(alice)

    summary = client.get(reverse("deployments:service-data-summary", args=[service.pk]))
    join = client.get(
        reverse("deployments:service-data-join", args=[service.pk]),
        {"correlation_id": "nope", "day": TODAY.strftime("%Y-%m-%d")},
    )

    assert summary.status_code == 200
    assert {s.designation: s.total for s in summary.context["summary"].series}["inputs"] == 1
    assert join.status_code == 200
    assert join.context["result"].rows == {}


def test_a_join_stops_at_its_read_limit_and_says_so(
    client: Client, alice: Any, service: Service, collecting: None, monkeypatch: Any
) -> None:
    from deployments import datasummary

    collect_rows([[20 + i, "basic"] for i in range(50)])
    monkeypatch.setattr(datasummary, "JOIN_SCAN_LIMIT", 100)  # bytes: less than one day's file
    client.force_login(alice)

    response = client.get(
        reverse("deployments:service-data-join", args=[service.pk]),
        {"correlation_id": "not-there", "day": TODAY.strftime("%Y-%m-%d")},
    )

    assert response.context["result"].gave_up
    assert b"that day holds more than one search may read" in response.content


def test_a_join_form_error_names_the_field_as_the_page_labels_it(client: Client, alice: Any, service: Service) -> None:
    client.force_login(alice)

    response = client.get(
        reverse("deployments:service-data-join", args=[service.pk]), {"correlation_id": "", "day": "2026-13-45"}
    )

    assert response.status_code == 200
    assert response.context["result"] is None
    page = response.content.decode()
    # Not Django's error dict, which names the form's internal fields ("correlation_id", "day").
    assert "<li>correlation_id" not in page
    assert "<li>day" not in page
    assert "Correlation or request id: This field is required." in page
    assert "Day: Enter a valid date." in page
