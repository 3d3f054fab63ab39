"""Tests for the report's tables: the paper-shaped markdown tables, the ablation ladder, the
headline and results.md."""

from __future__ import annotations

import pytest
from conftest import (
    ABLATION_VARIANTS,
    ACT_BITS,
    DEFAULT_VARIANT,
    FP32_TOP1,
    FULL_GRID_VARIANTS,
    GROUP_SIZES,
    make_record,
    realistic_records,
    two_model_records,
    variant_records,
)

from fgq_pipeline.report import (
    headline_markdown,
    paper_table_markdown,
    results_frame,
    write_report,
)

LADDER_AT_A8 = ["A", "C", "H", "B", "F", "E", "G", "D"]  # ascending top-1, from the drops in conftest
ABLATION_HEADING = "### digits_cnn on digits: ablation at N=4"


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the table under ``heading``, header and alignment rows left out."""
    section = markdown.split(heading, 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def variant_cells(name: str) -> list[str]:
    """The eight variant columns of an ablation row for a named variant."""
    settings = {**DEFAULT_VARIANT, **{**FULL_GRID_VARIANTS, **ABLATION_VARIANTS}[name][0]}
    on_off = {True: "on", False: "off"}
    return [
        settings["weight_format"],
        settings["scale_dtype"],
        settings["solver"],
        settings["rounding"],
        settings["act_calibration"],
        settings["policy"],
        on_off[settings["bn_reestimate"]],
        on_off[settings["bias_correction"]],
    ]


def cell_top1(name: str, act_bits: int) -> str:
    return percent(variant_records(name, [4], [act_bits])[0]["top1"])


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
    assert [row[:8] for row in rows] == [variant_cells(name) for name in LADDER_AT_A8]
    a8 = [float(row[9]) for row in rows]
    assert a8 == sorted(a8)


def test_ablation_table_has_fp32_line_and_top1_per_act_bits():
    markdown = paper_table_markdown(results_frame(realistic_records()))
    section = markdown.split(ABLATION_HEADING, 1)[1]
    assert section.startswith(f"\n\nFP32 top-1: {percent(FP32_TOP1)}%\n")
    assert "| top-1 A32 (float) | top-1 A8 | top-1 A4 |" in section
    rows = {tuple(row[:8]): row[8:] for row in table_rows(markdown, ABLATION_HEADING)}
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


def test_headline_is_the_best_ternary_row_even_where_a_uniform_baseline_scores_higher():
    records = realistic_records()
    best_a8 = variant_records("D", [4], [8])[0]
    uniform = {**best_a8, "weight_format": "int4", "top1": best_a8["top1"] + 0.01}
    headline = headline_markdown(results_frame([*records, uniform]))
    assert f"N=4, A8: {percent(best_a8['top1'])}% (solver `exact`" in headline and "int4" not in headline


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
