"""The block-reconstruction section: each reconstructed row beside its GPTQ-style twin, with its time."""

from conftest import make_record

from fgq_pipeline.report import results_frame, write_report
from fgq_pipeline.report.reconstruction import reconstruction_sections


def test_each_reconstructed_row_sits_beside_the_same_config_rounded_gptq_style(tmp_path):
    records = [
        make_record(4, 8, rounding="gptq"),
        make_record(64, 8, rounding="gptq", top1=0.80),
        make_record(64, 8, rounding="reconstruct", top1=0.85, reconstruct_seconds=150.0),
        make_record(64, 4, rounding="reconstruct", top1=0.70, reconstruct_seconds=90.0),  # no GPTQ twin
        make_record(64, 8, rounding="reconstruct", top1=0.99, finetuned=True),  # fine-tuned: not listed
        make_record(64, 8, rounding="gptq", weight_format="int2", top1=0.75),
        make_record(64, 8, rounding="reconstruct", weight_format="int2", top1=0.78, reconstruct_seconds=60.0),
    ]
    (section,) = reconstruction_sections(results_frame(records))
    lines = section.splitlines()
    row_a8 = next(line for line in lines if "| ternary | N=64 | A8 |" in line)
    assert "85.00" in row_a8 and "80.00" in row_a8 and "+5.00" in row_a8 and "2.5" in row_a8
    row_a4 = next(line for line in lines if "| A4 |" in line)
    assert "70.00" in row_a4 and "1.5" in row_a4 and row_a4.count("| - ") == 2
    row_int2 = next(line for line in lines if "| int2 | N=64 | A8 |" in line)  # beside the uniform GPTQ-style row
    assert "78.00" in row_int2 and "75.00" in row_int2 and "+3.00" in row_int2
    assert sum("| A8 |" in line for line in lines) == 2
    text = (write_report(records, tmp_path)["results.md"]).read_text()
    assert "## Block reconstruction" in text


def test_a_grid_without_reconstruction_has_no_section():
    assert reconstruction_sections(results_frame([make_record(64, 8)])) == []
