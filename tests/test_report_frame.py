"""Tests for the report's results frame: column order, row sorting, record validation and the
atomic, reproducible results.csv."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import ACT_BITS, GROUP_SIZES, make_record

from fgq_pipeline.report import RESULT_COLUMNS, results_frame, write_results_csv


def test_required_columns_come_first_then_extras(records):
    frame = results_frame(records)
    assert list(frame.columns) == [*RESULT_COLUMNS, "extra_training_fraction"]


def test_extra_column_is_empty_where_absent(records):
    frame = results_frame(records)
    tuned = frame[frame["finetuned"]]
    assert tuned["extra_training_fraction"].tolist() == [0.1]
    assert frame.loc[~frame["finetuned"], "extra_training_fraction"].isna().all()


def test_rows_sorted_by_act_bits_descending_then_group_size(records):
    frame = results_frame(records)
    post_training = frame[~frame["finetuned"]]
    order = list(zip(post_training["act_bits"], post_training["group_size"]))
    expected = [(bits, str(size)) for bits in ACT_BITS for size in GROUP_SIZES]
    assert order == expected
    assert frame["finetuned"].tolist() == [False] * len(expected) + [True]


def test_layer_sorts_after_filter_and_largest_integer():
    rows = [make_record("filter", 8), make_record(4, 8), make_record(4, 8), make_record(64, 8)]
    rows[2]["group_size"] = "layer"
    rows[3]["group_size"] = 128
    frame = results_frame(rows)
    assert frame["group_size"].tolist() == ["4", "128", "filter", "layer"]


def test_sort_does_not_depend_on_input_order(records):
    forward = results_frame(records)
    backward = results_frame(list(reversed(records)))
    pd.testing.assert_frame_equal(forward, backward)


def test_missing_key_error_names_key_and_record(records):
    del records[3]["top5"]
    with pytest.raises(ValueError, match=r"record 3 .*'top5'"):
        results_frame(records)


@pytest.mark.parametrize("bad_size", [0, "row", True, 2.0])
def test_bad_group_size_is_named(records, bad_size):
    records[1]["group_size"] = bad_size
    pattern = r"record 1: group_size .*" + re.escape(repr(bad_size))
    with pytest.raises(ValueError, match=pattern):
        results_frame(records)


def test_bad_act_bits_is_named(records):
    records[2]["act_bits"] = 16
    with pytest.raises(ValueError, match=r"record 2: act_bits .* got 16"):
        results_frame(records)


def test_csv_is_byte_identical_across_writes(records, tmp_path):
    first = write_results_csv(results_frame(records), tmp_path / "a" / "results.csv")
    reordered = results_frame(list(reversed(records)))
    second = write_results_csv(reordered, tmp_path / "b" / "results.csv")
    assert first.read_bytes() == second.read_bytes()
    header = first.read_text().splitlines()[0]
    assert header == ",".join([*RESULT_COLUMNS, "extra_training_fraction"])
    assert "0.983300" in first.read_text()


def test_failed_csv_write_keeps_old_file_and_leaves_no_temp(records, tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    target.write_text("old contents\n")

    def write_half_then_fail(self, path, **kwargs):
        Path(path).write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_results_csv(results_frame(records), target)
    assert target.read_text() == "old contents\n"
    assert [path.name for path in tmp_path.iterdir()] == ["results.csv"]


@pytest.mark.parametrize("key", ["rounding", "act_calibration"])
def test_records_need_rounding_and_act_calibration(records, key):
    del records[5][key]
    with pytest.raises(ValueError, match=rf"record 5 .*'{key}'"):
        results_frame(records)


def test_variant_columns_follow_solver():
    solver = RESULT_COLUMNS.index("solver")
    assert RESULT_COLUMNS[solver + 1 : solver + 3] == ["rounding", "act_calibration"]


def test_text_columns_must_be_strings(records):
    records[4]["rounding"] = None
    pattern = r"record 4: rounding must be a non-empty string, got None"
    with pytest.raises(ValueError, match=pattern):
        results_frame(records)
