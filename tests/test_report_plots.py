"""Tests for the report's figures: the PNG plots, the choice of panels and the four files
write_report leaves."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (
    ACT_BITS,
    DEFAULT_VARIANT,
    FULL_GRID_GROUP_SIZES,
    FULL_GRID_VARIANTS,
    GROUP_SIZES,
    make_record,
    realistic_records,
    two_model_records,
    variant_records,
)

from fgq_pipeline import report
from fgq_pipeline.report import (
    choose_panels,
    plot_top1_vs_group_size,
    plot_top1_vs_mult_eliminated,
    results_frame,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
