"""Tests for the report stage: table shape and order, reproducible files, atomic writes."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from fgq_pipeline import report
from fgq_pipeline.report import (
    RESULT_COLUMNS,
    paper_table_markdown,
    plot_top1_vs_group_size,
    plot_top1_vs_mult_eliminated,
    results_frame,
    write_report,
    write_results_csv,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GROUP_SIZES = [1, 4, 64, "filter"]
ACT_BITS = [32, 8, 4]
MULT_ELIMINATED = {1: 0.0, 4: 0.75, 64: 0.984375, "filter": 0.99}
BITS_PER_WEIGHT = {1: 9.0, 4: 3.5, 64: 2.125, "filter": 2.01}
FP32_TOP1 = 0.9833


def make_record(group_size, act_bits, **overrides) -> dict:
    """A plausible record: accuracy drops as groups grow and activations get narrower."""
    group_index = GROUP_SIZES.index(group_size)
    top1 = FP32_TOP1 - 0.004 * group_index - (0.0 if act_bits == 32 else 0.01 * (8 / act_bits))
    record = {
        "model": "digits_cnn",
        "dataset": "digits",
        "group_size": group_size,
        "act_bits": act_bits,
        "solver": "exact",
        "policy": "first_last_8bit",
        "bn_reestimate": True,
        "bias_correction": False,
        "finetuned": False,
        "top1": top1,
        "top5": 0.999,
        "fp32_top1": FP32_TOP1,
        "mult_eliminated": MULT_ELIMINATED[group_size],
        "bits_per_weight": BITS_PER_WEIGHT[group_size],
        "potential_speedup": 1.0 + 15.0 * MULT_ELIMINATED[group_size],
    }
    record.update(overrides)
    return record


@pytest.fixture
def records() -> list[dict]:
    """The PTQ grid in a scrambled order plus one fine-tuned row with an extra key."""
    grid = [make_record(size, bits) for bits in (4, 32, 8) for size in reversed(GROUP_SIZES)]
    finetuned = make_record(4, 8, finetuned=True, top1=0.9801, extra_training_fraction=0.1)
    return [finetuned, *grid]


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


def test_markdown_has_paper_shaped_rows(records):
    markdown = paper_table_markdown(results_frame(records))
    assert "| N=4 |" in markdown
    assert "| per-filter |" in markdown
    assert "FP32 top-1: 98.33%" in markdown
    assert "top-1 A32 (float) | top-1 A8 | top-1 A4 |" in markdown
    assert "effective group is the channel count" in markdown


def test_markdown_values_come_from_records(records):
    markdown = paper_table_markdown(results_frame(records))
    n4_a4 = make_record(4, 4)
    expected_top1 = f"{100 * n4_a4['top1']:.2f}"
    n4_line = next(line for line in markdown.splitlines() if line.startswith("| N=4 |"))
    cells = [cell.strip() for cell in n4_line.strip("|").split("|")]
    assert cells[1:4] == ["75.00%", "3.50", "12.25x"]
    assert cells[-1] == expected_top1


def test_markdown_separates_finetuned_block(records):
    markdown = paper_table_markdown(results_frame(records))
    assert markdown.count("### digits_cnn on digits") == 2
    finetuned_block = markdown.split(", fine-tuned")[1]
    assert "| N=4 | 75.00% | 3.50 | 12.25x | 98.01 |" in finetuned_block


def test_markdown_rejects_two_results_for_one_cell(records):
    records.append(make_record(4, 8, top1=0.5))
    with pytest.raises(ValueError, match=r"2 results for N=4 .*A8"):
        paper_table_markdown(results_frame(records))


def assert_is_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000


def test_group_size_plot_is_png(records, tmp_path):
    path = plot_top1_vs_group_size(results_frame(records), tmp_path / "plots" / "group.png")
    assert_is_png(path)


def test_mult_eliminated_plot_is_png(records, tmp_path):
    path = plot_top1_vs_mult_eliminated(results_frame(records), tmp_path / "mult.png")
    assert_is_png(path)


def test_group_size_plot_needs_post_training_rows(tmp_path):
    frame = results_frame([make_record(4, 8, finetuned=True)])
    with pytest.raises(ValueError, match="finetuned == False"):
        plot_top1_vs_group_size(frame, tmp_path / "group.png")


def test_plot_with_several_configurations_is_reproducible(records, tmp_path):
    records += [make_record(size, 8, solver="twn") for size in GROUP_SIZES]
    frame = results_frame(records)
    first = plot_top1_vs_group_size(frame, tmp_path / "first.png")
    second = plot_top1_vs_group_size(frame, tmp_path / "second.png")
    assert first.read_bytes() == second.read_bytes()


def test_write_report_returns_the_four_files(records, tmp_path):
    paths = write_report(records, tmp_path / "reports")
    assert set(paths) == set(report.REPORT_FILE_NAMES)
    assert all(path.parent == tmp_path / "reports" and path.is_file() for path in paths.values())
    markdown = paths["results.md"].read_text()
    assert markdown.startswith("# FGQ results\n")
    assert "do not edit by hand" in markdown
    assert_is_png(paths["top1_vs_group_size.png"])
    assert_is_png(paths["top1_vs_mult_eliminated.png"])
    assert not [path for path in paths["results.csv"].parent.iterdir() if path.name.startswith(".")]


def test_write_report_rejects_empty_records(tmp_path):
    with pytest.raises(ValueError, match="no result records"):
        write_report([], tmp_path)
