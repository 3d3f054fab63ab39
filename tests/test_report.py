"""Tests for the report stage: table shape and order, reproducible files, atomic writes."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from fgq_pipeline import report
from fgq_pipeline.report import (
    RESULT_COLUMNS,
    choose_panels,
    headline_markdown,
    paper_table_markdown,
    plot_top1_vs_group_size,
    plot_top1_vs_mult_eliminated,
    results_frame,
    write_report,
    write_results_csv,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GROUP_SIZES = [1, 4, 64, "filter"]
FULL_GRID_GROUP_SIZES = [1, 2, 4, 8, 16, 32, 64, "filter", "layer"]
ACT_BITS = [32, 8, 4]
MULT_ELIMINATED = {
    1: 0.0, 2: 0.5, 4: 0.75, 8: 0.875, 16: 0.9375, 32: 0.96875, 64: 0.984375,
    "filter": 0.99, "layer": 0.995,
}
BITS_PER_WEIGHT = {
    1: 9.0, 2: 5.0, 4: 3.5, 8: 2.75, 16: 2.4, 32: 2.2, 64: 2.125, "filter": 2.01, "layer": 2.0,
}
FP32_TOP1 = 0.9833
DEFAULT_VARIANT = {
    "solver": "exact",
    "rounding": "nearest",
    "act_calibration": "max",
    "policy": "first_last_8bit",
    "bn_reestimate": True,
    "bias_correction": False,
}
REPAIRS = {"bn_reestimate": True, "bias_correction": True}
# Full-grid variants of the realistic set, with how far each sits below variant D in top-1.
FULL_GRID_VARIANTS = {
    "A": ({"bn_reestimate": False, "bias_correction": False}, 0.030),
    "B": (REPAIRS, 0.010),
    "C": ({"solver": "twn", **REPAIRS}, 0.020),
    "D": ({"rounding": "gptq", "act_calibration": "mse", **REPAIRS}, 0.0),
}
# Variants run only at N=4 with 8- and 4-bit activations.
ABLATION_VARIANTS = {
    "E": ({"rounding": "gptq", **REPAIRS}, 0.005),
    "F": ({"act_calibration": "mse", **REPAIRS}, 0.007),
    "G": ({"rounding": "gptq", "act_calibration": "mse", "bn_reestimate": True}, 0.004),
    "H": (
        {"rounding": "gptq", "act_calibration": "mse", "policy": "ternarize_all", **REPAIRS},
        0.015,
    ),
}


def make_record(group_size, act_bits, **overrides) -> dict:
    """A plausible record: accuracy drops as groups grow and activations get narrower."""
    group_index = FULL_GRID_GROUP_SIZES.index(group_size)
    fp32_top1 = overrides.get("fp32_top1", FP32_TOP1)
    top1 = fp32_top1 - 0.004 * group_index - (0.0 if act_bits == 32 else 0.01 * (8 / act_bits))
    record = {
        "model": "digits_cnn",
        "dataset": "digits",
        "group_size": group_size,
        "act_bits": act_bits,
        **DEFAULT_VARIANT,
        "finetuned": False,
        "top1": top1,
        "top5": 0.999,
        "fp32_top1": fp32_top1,
        "mult_eliminated": MULT_ELIMINATED[group_size],
        "bits_per_weight": BITS_PER_WEIGHT[group_size],
        "potential_speedup": 1.0 + 15.0 * MULT_ELIMINATED[group_size],
    }
    record.update(overrides)
    return record


def variant_records(name: str, group_sizes, act_bits, **overrides) -> list[dict]:
    """The records of one named variant, ``drop`` below the best variant at every cell."""
    variant, drop = {**FULL_GRID_VARIANTS, **ABLATION_VARIANTS}[name]
    records = []
    for size in group_sizes:
        for bits in act_bits:
            record = make_record(size, bits, **{**variant, **overrides})
            record["top1"] -= drop
            records.append(record)
    return records


def realistic_records(**overrides) -> list[dict]:
    """One model's grid as the PTQ stage now writes it: four full-grid variants, N=4 ablations
    and one fine-tuned row."""
    records = []
    for name in FULL_GRID_VARIANTS:
        records += variant_records(name, FULL_GRID_GROUP_SIZES, ACT_BITS, **overrides)
    for name in ABLATION_VARIANTS:
        records += variant_records(name, [4], [8, 4], **overrides)
    fp32_top1 = overrides.get("fp32_top1", FP32_TOP1)
    finetuned = make_record(64, 8, **REPAIRS, **overrides)
    finetuned.update(finetuned=True, top1=fp32_top1 - 0.012, extra_training_fraction=1 / 30)
    return [*records, finetuned]


def two_model_records() -> list[dict]:
    return [
        *realistic_records(model="cifar_resnet20", dataset="cifar10", fp32_top1=0.917),
        *realistic_records(model="cifar_resnet32", dataset="cifar10", fp32_top1=0.927),
    ]


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the table under ``heading``, header and alignment rows left out."""
    section = markdown.split(heading, 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


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


# --------------------------------------------------------------------------------------------
# Variants, ablation tables, headline and several models
# --------------------------------------------------------------------------------------------

LADDER_AT_A8 = ["A", "C", "H", "B", "F", "E", "G", "D"]  # ascending top-1, from the drops above


def variant_cells(name: str) -> list[str]:
    """The six variant columns of an ablation row for a named variant."""
    settings = {**DEFAULT_VARIANT, **{**FULL_GRID_VARIANTS, **ABLATION_VARIANTS}[name][0]}
    on_off = {True: "on", False: "off"}
    return [
        settings["solver"],
        settings["rounding"],
        settings["act_calibration"],
        settings["policy"],
        on_off[settings["bn_reestimate"]],
        on_off[settings["bias_correction"]],
    ]


def cell_top1(name: str, act_bits: int) -> str:
    return percent(variant_records(name, [4], [act_bits])[0]["top1"])


ABLATION_HEADING = "### digits_cnn on digits: ablation at N=4"


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


def test_variants_differing_only_in_rounding_do_not_collide(records):
    records += [make_record(size, 8, rounding="gptq") for size in GROUP_SIZES]
    markdown = paper_table_markdown(results_frame(records))
    assert "rounding `gptq`" in markdown
    assert "rounding `nearest`" in markdown


def test_block_heading_names_the_variant():
    markdown = paper_table_markdown(results_frame(realistic_records()))
    assert (
        "### digits_cnn on digits: solver `exact`, rounding `gptq`, act. calibration `mse`, "
        "policy `first_last_8bit`, BN re-estimation on, bias correction on, post-training\n"
    ) in markdown


def test_single_group_size_variants_are_not_blocks_of_their_own():
    markdown = paper_table_markdown(results_frame(realistic_records()))
    headings = [line for line in markdown.splitlines() if line.startswith("### ")]
    assert len(headings) == len(FULL_GRID_VARIANTS) + 2  # + the ablation and fine-tuned blocks
    assert sum(heading == ABLATION_HEADING for heading in headings) == 1
    assert not any("ternarize_all" in heading for heading in headings)


def test_ablation_table_is_a_ladder_at_a8():
    markdown = paper_table_markdown(results_frame(realistic_records()))
    rows = table_rows(markdown, ABLATION_HEADING)
    assert [row[:6] for row in rows] == [variant_cells(name) for name in LADDER_AT_A8]
    a8 = [float(row[7]) for row in rows]
    assert a8 == sorted(a8)


def test_ablation_table_has_fp32_line_and_top1_per_act_bits():
    markdown = paper_table_markdown(results_frame(realistic_records()))
    section = markdown.split(ABLATION_HEADING, 1)[1]
    assert section.startswith(f"\n\nFP32 top-1: {percent(FP32_TOP1)}%\n")
    assert "| top-1 A32 (float) | top-1 A8 | top-1 A4 |" in section
    rows = {tuple(row[:6]): row[6:] for row in table_rows(markdown, ABLATION_HEADING)}
    full_grid = variant_records("D", [4], ACT_BITS)
    assert rows[tuple(variant_cells("D"))] == [percent(record["top1"]) for record in full_grid]
    assert rows[tuple(variant_cells("H"))] == ["—", cell_top1("H", 8), cell_top1("H", 4)]


def test_ablation_rejects_two_results_for_one_cell():
    records = realistic_records()
    records.append(variant_records("E", [4], [8])[0])
    with pytest.raises(ValueError, match=r"2 results for N=4, solver `exact`, rounding `gptq`.*A8"):
        paper_table_markdown(results_frame(records))


def test_finetuned_heading_shows_extra_training():
    markdown = paper_table_markdown(results_frame(realistic_records()))
    assert ", fine-tuned (extra training: 3.3% of the baseline's)\n" in markdown


def test_headline_gives_fp32_best_post_training_and_finetuned():
    records = realistic_records()
    best_a8 = variant_records("D", [4], [8])[0]["top1"]
    # Variant G (no bias correction) overtakes D at 4-bit activations only.
    boosted_a4 = next(
        record
        for record in records
        if record["act_bits"] == 4
        and record["rounding"] == "gptq"
        and not record["bias_correction"]
    )
    boosted_a4["top1"] = variant_records("D", [4], [4])[0]["top1"] + 0.001
    lines = headline_markdown(results_frame(records)).splitlines()
    assert lines[:3] == ["## Headline", "", "**digits_cnn on digits**"]
    assert lines[4:8] == [
        f"- FP32 top-1: {percent(FP32_TOP1)}%",
        f"- Best post-training top-1, N=4, A8: {percent(best_a8)}% (solver `exact`, "
        "rounding `gptq`, act. calibration `mse`, policy `first_last_8bit`, "
        "BN re-estimation on, bias correction on)",
        f"- Best post-training top-1, N=4, A4: {percent(boosted_a4['top1'])}% (solver `exact`, "
        "rounding `gptq`, act. calibration `mse`, policy `first_last_8bit`, "
        "BN re-estimation on, bias correction off)",
        f"- Fine-tuned top-1, N=64, A8: {percent(FP32_TOP1 - 0.012)}% "
        "(extra training: 3.3% of the baseline's)",
    ]


def test_headline_says_what_was_not_measured(records):
    without_a4 = [record for record in records if record["act_bits"] != 4]
    assert "- Best post-training top-1, N=4, A4: not measured" in headline_markdown(
        results_frame(without_a4)
    )


def test_results_md_opens_with_the_headline(tmp_path):
    markdown = write_report(realistic_records(), tmp_path)["results.md"].read_text()
    assert markdown.index("## Headline") < markdown.index("## Tables") < markdown.index("## Plots")


def test_two_models_each_get_headline_tables_and_ablation():
    frame = results_frame(two_model_records())
    headline = headline_markdown(frame)
    assert "**cifar_resnet20 on cifar10**\n\n- FP32 top-1: 91.70%" in headline
    assert "**cifar_resnet32 on cifar10**\n\n- FP32 top-1: 92.70%" in headline
    markdown = paper_table_markdown(frame)
    for model in ("cifar_resnet20", "cifar_resnet32"):
        heading = f"### {model} on cifar10: ablation at N=4"
        assert len(table_rows(markdown, heading)) == len(LADDER_AT_A8)
    first_model = markdown.split("### cifar_resnet32")[0]
    assert "cifar_resnet20 on cifar10: ablation at N=4" in first_model
    assert "cifar_resnet20 on cifar10: solver `exact`, rounding `nearest`, " in first_model


def panel_key(name: str, model: str = "digits_cnn", dataset: str = "digits") -> tuple:
    settings = {**DEFAULT_VARIANT, **FULL_GRID_VARIANTS[name][0]}
    return (model, dataset, *(settings[key] for key in report.VARIANT_KEYS))


def test_panels_are_shared_between_models_best_first():
    panels, notes = choose_panels(results_frame(two_model_records()))
    expected = [
        panel_key(name, model, "cifar10")
        for model in ("cifar_resnet20", "cifar_resnet32")
        for name in sorted("BD", key=lambda name: panel_key(name))
    ]
    assert [panel.key for panel in panels] == expected
    assert notes == [
        f"{model} on cifar10: best 2 of 4 variants; all are in results.csv"
        for model in ("cifar_resnet20", "cifar_resnet32")
    ]


def test_more_than_four_variants_keep_the_four_best():
    records = realistic_records()
    records += [
        make_record(size, bits, solver="twn", top1=0.5)
        for size in FULL_GRID_GROUP_SIZES
        for bits in ACT_BITS
    ]
    panels, notes = choose_panels(results_frame(records))
    assert sorted(panel.key for panel in panels) == sorted(map(panel_key, FULL_GRID_VARIANTS))
    assert notes == ["digits_cnn on digits: best 4 of 5 variants; all are in results.csv"]


def finetuned_panel_keys(panels) -> list[tuple]:
    return [panel.key for panel in panels if panel.rows["finetuned"].any()]


def test_finetuned_point_goes_on_its_variants_panel():
    panels, _ = choose_panels(results_frame(realistic_records()))
    assert finetuned_panel_keys(panels) == [panel_key("B")]


def test_finetuned_point_falls_back_to_the_best_panel():
    records = realistic_records()
    records[-1]["policy"] = "ternarize_all"  # no full-grid variant ternarizes every layer
    panels, _ = choose_panels(results_frame(records))
    assert finetuned_panel_keys(panels) == [panel_key("D")]


def test_plots_need_a_variant_run_at_several_group_sizes(tmp_path):
    ablation_only = variant_records("E", [4], [8, 4])
    with pytest.raises(ValueError, match="more than one group size"):
        plot_top1_vs_mult_eliminated(results_frame(ablation_only), tmp_path / "mult.png")


def test_report_files_do_not_depend_on_record_order(tmp_path):
    records = two_model_records()
    first = write_report(records, tmp_path / "first")
    second = write_report(list(reversed(records)), tmp_path / "second")
    for name in report.REPORT_FILE_NAMES:
        assert first[name].read_bytes() == second[name].read_bytes(), name
