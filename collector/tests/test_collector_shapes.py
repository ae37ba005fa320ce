"""What collect() writes for each input shape, read from debug mode's standard output (no storage needed)."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pandas as pd
import pytest
from conftest import rows_of

import collector
from collector import CollectError, ModelDataCollector, config, engine, tabular

INPUT_EXTRAS = [
    "$aml_dc_correlation_id",
    "$aml_dc_scoring_timestamp",
    "$aml_dc_boundary",
    "$aml_workspace",
    "$aml_service_name",
    "$aml_model_name",
    "$aml_model_version",
    "$aml_request_id",
]


@pytest.fixture
def debug(configure):
    return configure(**{config.DEBUG: "true"})


def printed(capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    return rows_of(capsys.readouterr().out)


@pytest.mark.usefixtures("debug")
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1.5, 2, "a"], [["1.5", "2", "a"]]),
        ((1, 2, 3), [["1", "2", "3"]]),
        ([[1, 2, 3], [4, 5, 6]], [["1", "2", "3"], ["4", "5", "6"]]),
        ([(1, "x"), (2, "y")], [["1", "x"], ["2", "y"]]),
        (np.array([0.25, 0.5, 0.75]), [["0.25", "0.5", "0.75"]]),
        (np.array([[1, 2], [3, 4]]), [["1", "2"], ["3", "4"]]),
        (np.array([[1.0, "a,b"], [2.0, 'say "hi"']], dtype=object), [["1.0", "a,b"], ["2.0", 'say "hi"']]),
        (np.array(["x", "y"]), [["x", "y"]]),
        (np.array([0.1, 0.2], dtype=np.float32), [["0.1", "0.2"]]),
        ([np.array([1, 2]), np.array([3, 4])], [["1", "2"], ["3", "4"]]),
        (pd.Series([1.0, 2.0]), [["1.0", "2.0"]]),
        (7, [["7"]]),
        ("text", [["text"]]),
        ([True, None, "multi\nline"], [["True", "", "multi\nline"]]),
    ],
    ids=[
        "flat-list-one-row",
        "tuple-one-row",
        "list-of-lists-rows",
        "list-of-tuples-rows",
        "1d-array-one-row",
        "2d-array-rows",
        "object-array",
        "string-array",
        "float32",
        "list-of-arrays",
        "series-one-row",
        "scalar",
        "string-scalar",
        "bool-none-newline",
    ],
)
def test_it_writes_each_shape(data, expected, capsys) -> None:
    dc = ModelDataCollector("best_model", designation="predictions")
    dc.collect(data)
    out = printed(capsys)
    assert out[0] == [f"feature_{i + 1}" for i in range(len(expected[0]))]
    assert out[1:] == expected


def test_it_uses_dataframe_columns_as_header(debug, capsys) -> None:
    dc = ModelDataCollector("best_model", designation="signals")
    dc.collect(pd.DataFrame({"age": [30, 40], "city": ["Oslo", "Rome"]}))
    assert printed(capsys) == [["age", "city"], ["30", "Oslo"], ["40", "Rome"]]


def test_it_writes_each_dataframe_column_as_its_own_type(debug, capsys) -> None:
    # An int column among floats must not become floats: large ids would lose digits.
    dc = ModelDataCollector("best_model", designation="signals")
    dc.collect(pd.DataFrame({"id": [12345678901234567, 3], "x": [0.5, 0.25]}))
    assert printed(capsys) == [["id", "x"], ["12345678901234567", "0.5"], ["3", "0.25"]]


def test_it_writes_numpy_dates_as_iso_text(debug, capsys) -> None:
    dc = ModelDataCollector("best_model", designation="signals")
    dc.collect(np.array(["2024-01-01T00:00:00.5", "2024-01-02"], dtype="datetime64[ns]"))
    assert printed(capsys)[1] == ["2024-01-01T00:00:00.500000000", "2024-01-02T00:00:00.000000000"]


def test_it_prefers_feature_names_over_dataframe_columns(debug, capsys) -> None:
    dc = ModelDataCollector("best_model", designation="signals", feature_names=["a", "b"])
    dc.collect(pd.DataFrame({"age": [30], "city": ["Oslo"]}))
    assert printed(capsys) == [["a", "b"], ["30", "Oslo"]]


def test_it_writes_all_columns_when_feature_names_are_fewer(debug, capsys) -> None:
    names = ["f1", "f2", "f3", "f4", "f5", "f6"]
    dc = ModelDataCollector("best_model", designation="general", feature_names=names)
    dc.collect(np.arange(10.0))
    out = printed(capsys)
    assert out[0] == [*names, "feature_7", "feature_8", "feature_9", "feature_10"]
    assert out[1] == [str(float(i)) for i in range(10)]


def test_it_appends_inputs_columns_and_returns_correlations(debug, capsys, workspace) -> None:
    dc = ModelDataCollector("best_model", designation="inputs", feature_names=["feat1", "feat2"])
    with collector.request_context("req-42"):
        corr = dc.collect([[1, 2], [3, 4]])
    out = printed(capsys)
    assert out[0] == ["feat1", "feat2", *INPUT_EXTRAS]
    assert set(corr) == {"$aml_dc_correlation_id", "$aml_dc_scoring_timestamp", "$aml_request_id"}
    for row in out[1:]:
        assert row[2:] == [
            corr["$aml_dc_correlation_id"],
            corr["$aml_dc_scoring_timestamp"],
            "1440",
            workspace,
            "svc",
            "best_model",
            "3",  # from AML_MODEL_DC_MODEL_VERSIONS
            "req-42",
        ]
    assert [r[:2] for r in out[1:]] == [["1", "2"], ["3", "4"]]
    assert dc.collect([5, 6], user_correlation_id="mine")["$aml_dc_correlation_id"] == "mine"


def test_it_writes_boundary_60_with_hour_boundary(configure, capsys) -> None:
    configure(**{config.DEBUG: "true", config.BOUNDARY: "hour"})
    ModelDataCollector("best_model", designation="inputs").collect([1])
    assert printed(capsys)[1][3] == "60"


def test_it_gives_each_call_its_own_correlation_id(debug) -> None:
    dc = ModelDataCollector("best_model", designation="inputs")
    ids = {dc.collect([1])["$aml_dc_correlation_id"] for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 36 and i.count("-") == 4 for i in ids)


@pytest.mark.parametrize(
    "prediction",
    [np.array([0.9, 0.1]), [0.9, 0.1], pd.DataFrame({"p0": [0.9], "p1": [0.1]})],
    ids=["array", "list", "dataframe"],
)
def test_it_adds_correlations_to_predictions(debug, capsys, prediction) -> None:
    inputs_dc = ModelDataCollector("best_model", designation="inputs", feature_names=["x"])
    prediction_dc = ModelDataCollector("best_model", designation="predictions", feature_names=["p0", "p1"])
    corr = inputs_dc.collect([3.0])
    capsys.readouterr()
    prediction_dc.collect(prediction_dc.add_correlations(prediction, corr))
    out = printed(capsys)
    assert out[0] == ["p0", "p1", "$aml_dc_correlation_id", "$aml_dc_scoring_timestamp", "$aml_request_id"]
    assert out[1] == ["0.9", "0.1", corr["$aml_dc_correlation_id"], corr["$aml_dc_scoring_timestamp"], ""]


def test_it_collects_what_add_correlations_returned_whatever_happens_to_its_input_after(debug, capsys) -> None:
    # add_correlations() of floats keeps a copy of them for collect() (which spools them as floats, not as the
    # returned object array's Python floats): a change to the script's array in between is not recorded.
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=["p"])
    result = np.array([[0.5], [0.25]])
    correlated = dc.add_correlations(result, {"$aml_dc_correlation_id": "c"})
    result[0, 0] = 9.0
    dc.collect(correlated)
    assert printed(capsys) == [["p", "$aml_dc_correlation_id"], ["0.5", "c"], ["0.25", "c"]]


def test_it_collects_the_correlations_added_to_an_empty_array(debug, capsys) -> None:
    dc = ModelDataCollector("best_model", designation="predictions")
    dc.collect(dc.add_correlations(np.array([]), {"$aml_dc_correlation_id": "c", "$aml_request_id": "r"}))
    assert printed(capsys)[1:] == [["c", "r"]]
    assert collector.stats()["rows_dropped_total"] == 0


def test_it_adds_correlations_to_each_row(debug) -> None:
    dc = ModelDataCollector("best_model", designation="predictions")
    corr = {"$aml_dc_correlation_id": "c"}
    assert dc.add_correlations([[1], [2]], corr) == [[1, "c"], [2, "c"]]
    assert dc.add_correlations(np.array([[1], [2]]), corr).tolist() == [[1, "c"], [2, "c"]]
    assert dc.add_correlations([1, 2], None) == [1, 2]


def test_it_accepts_the_legacy_constructor(debug, capsys) -> None:
    # Positional arguments in the 0.1.0a21 order, identifier= of the versions before 0.1.0a16.
    dc = ModelDataCollector("best_model", "inputs", ["a"], "s/r/w", "svc", "7", "default")
    assert dc.designation == "inputs"
    assert ModelDataCollector("best_model", identifier="predictions").designation == "predictions"
    assert ModelDataCollector("best_model").designation == "general"
    assert ModelDataCollector("best_model", designation="default").designation == "general"
    assert ModelDataCollector("best_model", designation="xgbc_predictions").designation == "xgbc_predictions"


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "a\\b", "nul\x00", " x", "tab\there"])
def test_it_refuses_unsafe_designations_in_the_constructor(bad) -> None:
    with pytest.raises(ValueError, match="path segment"):
        ModelDataCollector("best_model", designation=bad)


def test_it_refuses_both_designation_and_identifier() -> None:
    with pytest.raises(ValueError, match="not both"):
        ModelDataCollector("m", designation="inputs", identifier="predictions")


def test_legacy_import_path_is_the_same_class() -> None:
    from azureml.monitoring import ModelDataCollector as Legacy

    assert Legacy is ModelDataCollector


@pytest.mark.parametrize(
    ("first", "bad", "reason"),
    [
        (None, {"a": 1}, "not_tabular"),
        (None, None, "not_tabular"),
        (None, np.zeros((2, 2, 2)), "not_tabular"),
        ([1, 2], [[1, 2], [1, 2, 3]], "ragged"),
        (None, [1, [2, 3]], "unencodable_cell"),
        (None, [1, {"k": "v"}], "unencodable_cell"),
        (None, [b"\xff"], "unencodable_cell"),
        (None, ["\ud800"], "unencodable_cell"),
        (None, ["x" * 5000], "row_too_large"),
    ],
)
def test_it_drops_bad_input_counts_it_and_never_raises(configure, capsys, caplog, first, bad, reason) -> None:
    configure(**{config.DEBUG: "true", config.MAX_ROW_BYTES: "4096"})
    dc = ModelDataCollector("best_model", designation="predictions")
    if first is not None:
        dc.collect(first)
    with caplog.at_level(logging.WARNING, logger="collector"):
        dc.collect(bad)
        dc.collect(bad)
    dropped = collector.stats()["rows_dropped"]
    assert dropped[reason] >= 2
    messages = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(messages) == 1, messages  # one message per kind, then only counted
    assert "Further drops" in messages[0]


def test_rows_of_another_width_get_a_header_of_their_own(debug, capsys) -> None:
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=["prediction"])
    for result in ([1, 2], [3, 4, 5], [6, 7]):
        dc.collect(np.array(result))
    assert printed(capsys) == [
        ["prediction", "feature_2"],
        ["1", "2"],
        ["prediction", "feature_2", "feature_3"],
        ["3", "4", "5"],
        ["6", "7"],
    ]
    assert collector.stats()["rows_dropped_total"] == 0


def test_only_the_rows_add_correlations_made_are_named_for_its_columns(debug, capsys) -> None:
    dc = ModelDataCollector("best_model", designation="predictions", feature_names=["prediction"])
    correlations = {"$aml_dc_correlation_id": "c1", "$aml_dc_scoring_timestamp": "t", "$aml_request_id": "r"}
    dc.collect(np.arange(5))
    dc.collect(dc.add_correlations(np.arange(2), correlations))  # also 5 cells
    dc.collect(np.arange(6))
    tail = list(correlations)
    assert printed(capsys) == [
        ["prediction", "feature_2", "feature_3", "feature_4", "feature_5"],
        ["0", "1", "2", "3", "4"],
        ["prediction", "feature_2", *tail],
        ["0", "1", "c1", "t", "r"],
        ["prediction", "feature_2", "feature_3", "feature_4", "feature_5", "feature_6"],
        ["0", "1", "2", "3", "4", "5"],
    ]


def test_it_keeps_the_good_rows_of_a_batch(debug, capsys) -> None:
    dc = ModelDataCollector("best_model", designation="predictions")
    dc.collect([[1, 2], [3], [4, 5], [6, [7]]])
    assert printed(capsys)[1:] == [["1", "2"], ["4", "5"]]
    assert collector.stats()["rows_dropped"]["ragged"] == 1
    assert collector.stats()["rows_dropped"]["unencodable_cell"] == 1


@pytest.mark.parametrize(
    ("bad", "reason"),
    [({"a": 1}, "not_tabular"), ([[1], [1, 2]], "ragged"), ([1, [2]], "unencodable_cell")],
)
def test_strict_mode_raises(configure, bad, reason) -> None:
    configure(**{config.STRICT: "true", config.ENABLED: "false"})
    dc = ModelDataCollector("best_model", designation="predictions")
    with pytest.raises(CollectError) as info:
        dc.collect(bad)
    assert info.value.reason == reason


def test_strict_argument_raises_even_with_collection_off(configure) -> None:
    configure(**{config.ENABLED: "false"})
    with pytest.raises(CollectError):
        ModelDataCollector("best_model", strict=True).collect([[1, [2]]])


def test_off_is_a_cheap_no_op(configure) -> None:
    configure(**{config.ENABLED: "false"})
    threads = threading.active_count()
    dc = ModelDataCollector("best_model", designation="inputs")
    corr = dc.collect(np.zeros((3, 3)))
    assert corr is not None  # scripts may pass it on to add_correlations()
    assert dc.collect({"not": "tabular"}) is not None
    assert threading.active_count() == threads
    stats = collector.stats()
    assert stats["mode"] == "off"
    assert stats["rows_collected"] == 0


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(7).random((300, 7)),
        np.asfortranarray(np.random.default_rng(8).random((50, 4))),
        np.array([0.1, -0.0, np.nan, np.inf, -np.inf, 5e-324, 1.7976931348623157e308]),
        np.array([[1.5, 2.5]], dtype=">f8"),
        np.random.default_rng(9).random((20, 6))[::2, ::3],
        pd.DataFrame({"a": [1.5, 2.5], "b": [3.0, 4.0]}),
    ],
    ids=["random", "fortran-order", "special-floats", "big-endian", "strided", "frame"],
)
@pytest.mark.parametrize("suffix", ["", ',id-1,"quoted, with comma",é'])
def test_packed_records_become_the_csv_the_writer_would_write(data, suffix) -> None:
    # What the delivery agent writes for a writer's packed records is what encode() writes in the writer, in
    # chunks whose CSV never passes the size they were cut for (a frame's CSV must fit in one block).
    kind, snap, _ = tabular.capture(data)
    encoded, columns = tabular.encode(kind, snap, suffix=suffix, max_row_bytes=65536, chunk_bytes=4096)
    packed = tabular.pack(kind, snap, suffix=suffix, max_row_bytes=65536, chunk_bytes=4096)
    assert packed is not None
    assert tabular.unpack(b"".join(record for record, _, _ in packed.chunks)) == b"".join(c for c, _ in encoded.chunks)
    for record, rows, most in packed.chunks:
        csv = tabular.unpack(record)
        assert csv.count(b"\n") == rows
        assert len(csv) <= most <= 4096
    assert (packed.rows, packed.ncols, packed.data_columns) == (encoded.rows, encoded.ncols, columns)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(9).random((40, 1)),
        np.array([0.5, 1.5]),
    ],
    ids=["floats", "one-row"],
)
def test_what_add_correlations_made_of_numbers_is_packed_as_the_same_csv(data) -> None:
    correlations = {"$aml_dc_correlation_id": "id, 1", "$aml_dc_scoring_timestamp": "2026-11-24", "rid": 'r"1'}
    correlated = ModelDataCollector("m", designation="predictions").add_correlations(data, correlations)
    kind, snap, _ = tabular.capture(correlated)
    encoded, _ = tabular.encode(kind, snap, suffix="", max_row_bytes=65536)
    packed = tabular.pack(kind, snap, suffix="", max_row_bytes=65536, tail_columns=3)
    assert packed is not None
    assert tabular.unpack(b"".join(record for record, _, _ in packed.chunks)) == b"".join(c for c, _ in encoded.chunks)
    assert (packed.rows, packed.ncols) == (encoded.rows, encoded.ncols)


def test_object_arrays_are_packed_only_with_one_type_of_number_and_the_same_correlations_in_every_row() -> None:
    def pack(rows: list[list[object]], tail_columns: int = 1) -> tabular.Packed | None:
        kind, snap, _ = tabular.capture(np.array(rows, dtype=object))
        return tabular.pack(kind, snap, suffix="", max_row_bytes=65536, tail_columns=tail_columns)

    assert pack([[1.5, "id"], [2.5, "id"]]) is not None
    assert pack([[1.5, "id"], [2.5, "other"]]) is None  # not add_correlations()'s
    assert pack([[1, "id"], [2.5, "id"]]) is None  # 1 and 2.5: no one dtype writes both as they are
    assert pack([[1, "id"]]) is None  # ints: packed, they would take more spool than their CSV
    assert pack([[1.5, "x", pd.NA]], tail_columns=2) is None  # == of a str and pd.NA raises
    assert pack([[1.5, "id"]], tail_columns=0) is None  # not from add_correlations()
    assert pack([[1.5, 3]]) is None  # a correlation that is not text
    assert pack([["a", "id"]]) is None


@pytest.mark.parametrize(
    "data",
    [
        [1.0, 2.0],
        np.array([[1.0, "a"]], dtype=object),
        np.array([1.5, 2.5], dtype=np.float32),
        np.zeros((0, 3)),
        np.array(["2026-11-24"], dtype="datetime64[D]"),
        np.array([[0, 1]], dtype=np.int64),
        np.array([[True, False]]),
        np.ma.masked_array([[1.5, 2.5]], mask=[[0, 1]]),
    ],
    ids=["list", "object-array", "float32", "empty", "dates", "int64", "bool", "masked"],
)
def test_only_numbers_that_read_back_as_the_same_text_are_packed(data) -> None:
    kind, snap, _ = tabular.capture(data)
    assert tabular.pack(kind, snap, suffix="", max_row_bytes=65536) is None


def test_bytes_that_are_not_packed_records_are_refused() -> None:
    kind, snap, _ = tabular.capture(np.array([[1.0, 2.0]]))
    packed = tabular.pack(kind, snap, suffix="", max_row_bytes=65536)
    assert packed is not None
    record = packed.chunks[0][0]
    for bad in (record[:-1], record + b"x", b"<c16" + record[4:], b"abc"):
        with pytest.raises(ValueError, match="not a packed record"):
            tabular.unpack(bad)


CALLS = [
    (np.random.default_rng(10).random((3, 4)), ("id-1", "2026-11-24T10:00:00.000000Z", 'q"uote, comma', "")),
    (np.array([0.1, -0.0, np.nan, np.inf, -np.inf, 5e-324, 1.7976931348623157e308]), ()),
    (np.asfortranarray(np.random.default_rng(11).random((5, 2))), ("c",)),
    (np.random.default_rng(12).random((20, 6))[::2, ::3], ("a\nb",)),
    (pd.DataFrame({"a": [1.5, 2.5], "b": [3.0, 4.0]}), ("id-2",)),
]


def test_calls_of_floats_gathered_in_a_record_become_the_csv_the_writer_would_write() -> None:
    # The spool writer gathers a wake's calls of floats bound for one file into one record (tabular.Calls); the
    # delivery agent writes for it what encode() writes for each call, within the CSV size counted for it.
    for data, cells in CALLS:
        kind, snap, _ = tabular.capture(data)
        found = tabular.floats_of(kind, snap, cells, max_row_bytes=65536)
        assert found is not None, data
        values, _, widest = found
        calls = tabular.Calls(values.shape[1])
        calls.add(values, cells, values.shape[0] * widest)
        encoded, _ = tabular.encode(kind, snap, suffix=engine.suffix_of(cells), max_row_bytes=65536)
        csv = b"".join(chunk for chunk, _ in encoded.chunks)
        assert tabular.unpack(calls.record()) == csv
        assert len(csv) <= calls.csv_bytes


def test_a_record_of_calls_holds_every_call_in_order() -> None:
    rng = np.random.default_rng(13)
    calls, expected = tabular.Calls(3), b""
    for i in range(50):
        data, cells = rng.random((i % 4 + 1, 3)), (f"id-{i}",)
        values, _, widest = tabular.floats_of(tabular.ARRAY, data, cells, 65536)
        calls.add(values, cells, values.shape[0] * widest)
        encoded, _ = tabular.encode(tabular.ARRAY, data, suffix=f",id-{i}", max_row_bytes=65536)
        expected += b"".join(chunk for chunk, _ in encoded.chunks)
    record = calls.record()
    assert tabular.unpack(record) == expected
    assert calls.rows == expected.count(b"\n")
    assert len(expected) <= calls.csv_bytes
    # After a packed record of one call, in one frame: a frame may hold both (pack() takes a call too large for Calls).
    packed = tabular.pack(tabular.ARRAY, np.array([[1.0, 2.0, 3.0]]), suffix="", max_row_bytes=65536)
    assert packed is not None
    assert tabular.unpack(packed.chunks[0][0] + record) == b"1.0,2.0,3.0\n" + expected


@pytest.mark.parametrize(
    ("data", "cells", "max_row_bytes"),
    [
        (np.array([[1.5, 2.5]], dtype=">f8"), (), 65536),
        (np.array([1.5, 2.5], dtype=np.float32), (), 65536),
        (np.array([[0, 1]], dtype=np.int64), (), 65536),
        (np.array([[1.5, "a"]], dtype=object), (), 65536),
        (np.ma.masked_array([[1.5, 2.5]], mask=[[0, 1]]), (), 65536),
        (np.zeros((0, 3)), (), 65536),
        (np.array([[1.5]]), ("é",), 65536),
        (np.array([[1.5]]), ("x" * 100,), 200),
        ([1.5, 2.5], (), 65536),
    ],
    ids=["big-endian", "float32", "int64", "object", "masked", "empty", "not-ascii", "row-too-large", "list"],
)
def test_only_calls_of_floats_with_ascii_cells_that_fit_a_row_are_gathered(data, cells, max_row_bytes) -> None:
    # The others go to pack() or encode(), which check them exactly (and count what they cannot write).
    kind, snap, _ = tabular.capture(data)
    assert tabular.floats_of(kind, snap, cells, max_row_bytes) is None


def test_bytes_that_are_not_a_record_of_calls_are_refused() -> None:
    calls = tabular.Calls(2)
    calls.add(np.array([[1.0, 2.0]]), ("id",), 100)
    record = calls.record()
    head = tabular.CALLS_HEAD.size
    for bad in (record[:-1], record + b"x", record[:head] + b"\0" + record[head + 1 :], record[: head + 3]):
        with pytest.raises(ValueError, match="not a packed record"):
            tabular.unpack(bad)


@pytest.mark.parametrize(
    ("calls", "values"),
    [
        (json.dumps(["<f8", 1, [[0, []]]]), b""),  # a call of no rows
        (json.dumps(["<f8", 1, [[-1, ["x"]]]]), b""),
        (json.dumps(["<f8", 1, [[True, ["x"]]]]), b""),
        (json.dumps(["<f8", 0, [[1, []]]]), b""),
        (json.dumps(["<f8", 1, [[1, [5]]]]), np.zeros(1).tobytes()),  # a cell that is not text
        (json.dumps(["<c16", 1, [[1, []]]]), np.zeros(2).tobytes()),
        (json.dumps(["<f8", 1, [[1, ["x"]]] * 2]), np.zeros(1).tobytes()),  # values missing
        (json.dumps(["<f8", 1, [[1, ["x" * 1000]]] * 2000]), np.zeros(2000).tobytes()),  # more CSV than a frame
        (json.dumps({"not": "a list"}), b""),
        ("[" * 100_000, b""),  # nested too deep to read
        ('["<f8", 1, [[1, ["x"]]', b""),  # cut short
    ],
    ids=[
        "no-rows",
        "negative-rows",
        "bool-rows",
        "no-numbers",
        "int-cell",
        "complex",
        "values-missing",
        "too-much-csv",
        "object",
        "deep",
        "cut-short",
    ],
)
def test_a_record_of_calls_that_a_writer_cannot_make_is_refused(calls, values) -> None:
    meta = calls.encode()
    with pytest.raises(ValueError, match="not a packed record"):
        tabular.unpack(tabular.CALLS_HEAD.pack(tabular.CALLS_TAG, len(meta)) + meta + values)
