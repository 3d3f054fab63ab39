"""The bits-fair frontier: each format's best point, the Pareto front, and where ternary FGQ stands."""

from conftest import make_record

from fgq_pipeline.report import results_frame, write_report
from fgq_pipeline.report.frontier import (
    frontier_markdown,
    frontier_points,
    frontier_sentence,
)


def point(weight_format, scale_dtype, group_size, bits, top1, act_bits=8, **variant):
    return make_record(group_size, act_bits, weight_format=weight_format, scale_dtype=scale_dtype,
                       bits_per_weight=bits, top1=top1, **variant)


def test_each_format_is_its_best_row_and_the_front_keeps_only_undominated_points():
    frame = results_frame([
        point("ternary", "fp32", 4, 10.0, 0.90),
        point("ternary", "fp32", 4, 10.0, 0.80, rounding="gptq"),  # a weaker variant of the same format
        point("ternary", "fp16", 4, 6.0, 0.89),
        point("ternary", "fp32", 64, 2.5, 0.80),
        point("int2", "fp32", 64, 2.6, 0.70),   # more bits, less top-1: dominated
        point("int3", "fp32", 64, 3.6, 0.88),
    ])
    points = frontier_points(frame, 8)
    assert len(points) == 5
    front = {(p.weight_format, p.scale_dtype, p.group_size) for p in points.itertuples() if p.on_front}
    assert front == {("ternary", "fp32", "64"), ("int3", "fp32", "64"), ("ternary", "fp16", "4"),
                     ("ternary", "fp32", "4")}
    sentence = frontier_sentence(points, 8)
    assert sentence.startswith("At A8 ternary FGQ is on the Pareto front at ternary N=64 (2.50 bits/weight, 80.00%)")
    assert "uniform points on the front: 1" in sentence


def test_a_dominated_ternary_format_is_named_with_what_beats_it():
    frame = results_frame([point("ternary", "fp32", 64, 2.5, 0.80, act_bits=4),
                           point("int2", "fp16", "filter", 2.1, 0.85, act_bits=4)])
    sentence = frontier_sentence(frontier_points(frame, 4), 4)
    assert sentence == ("At A4 ternary FGQ is off the Pareto front: its best point (2.50 bits/weight, 80.00%) is "
                        "dominated by int2 fp16 scales at per-filter (2.10 bits/weight, 85.00%).")


def test_the_report_writes_the_frontier_table_and_plot(tmp_path):
    records = [point(fmt, "fp32", n, bits, top1, act_bits=act_bits)
               for fmt, n, bits, top1 in (("ternary", 4, 10.0, 0.90), ("ternary", 64, 2.5, 0.82),
                                          ("int3", 4, 3.5, 0.88), ("int3", 64, 3.1, 0.84))
               for act_bits, top1 in ((8, top1), (4, top1 - 0.05))]
    paths = write_report(records, tmp_path)
    markdown = paths["results.md"].read_text()
    assert "## Top-1 against bits per weight" in markdown and "### A8" in markdown and "### A4" in markdown
    assert "| int3 | fp32 | N=4 | 3.50 | 88.00 |" in markdown
    assert paths["top1_vs_bits_per_weight.png"].stat().st_size > 10_000
    assert frontier_markdown(results_frame(records)) in markdown
