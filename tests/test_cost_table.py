"""The cost table: counts checked by hand on ResNet-18, derived storage, stable files."""

import math

import pytest
import torchvision

from fgq_pipeline.cost_table import cost_rows, cost_table_markdown, write_cost_table
from fgq_pipeline.quant import QuantConfig, count_ops, quantize_model

# Counts scale with resolution only; 64x64 keeps the forward pass of each count cheap.
INPUT_SHAPE = (3, 64, 64)
SMALL = {"archs": ("resnet18",), "group_sizes": (1, 4, 64), "policies": ("ternarize_all",), "input_shape": INPUT_SHAPE}
# ResNet-18's first conv at 64x64: 64 filters of 3x7x7 over a 32x32 output (stride 2).
CONV1_OUTPUTS = 64 * 32 * 32
CONV1_MACS = CONV1_OUTPUTS * 3 * 7 * 7


@pytest.fixture(scope="module")
def rows() -> dict:
    return {row["group_size"]: row for row in cost_rows(**SMALL)}


def test_n4_removes_three_quarters_except_in_the_three_channel_first_conv(rows):
    # Every other layer has C % 4 == 0; conv1 has C=3, so N=4 is capped at 3: one multiply per 3 MACs.
    row = rows[4]
    expected = (row["macs"] - CONV1_MACS) // 4 + CONV1_OUTPUTS * 7 * 7
    assert row["multiplications"] == expected
    assert row["mult_eliminated"] == pytest.approx(1 - expected / row["macs"])
    assert 0.74 < row["mult_eliminated"] < 0.75


def test_n1_eliminates_no_multiplication(rows):
    assert rows[1]["multiplications"] == rows[1]["macs"]
    assert rows[1]["mult_eliminated"] == 0.0


def test_narrower_scales_store_fewer_bits(rows):
    for row in rows.values():
        assert (
            row["bits_per_weight_fp32_scales"] > row["bits_per_weight_fp16_scales"] > row["bits_per_weight_int8_scales"]
        )
    # All layers ternary with N=1: every weight carries 2 bits plus its own scale (and the stem's
    # 147-weight filter rows padded to whole bytes).
    assert rows[1]["bits_per_weight_fp16_scales"] == pytest.approx(2 + 16, rel=1e-5)


def test_derived_bits_match_a_count_with_that_scale_width(rows):
    config = QuantConfig(group_size=4, policy="ternarize_all", act_bits=32, bn_reestimate=False, bias_correction=False)
    model = quantize_model(torchvision.models.get_model("resnet18", weights=None), config)
    for scale_dtype in ("fp32", "fp16", "int8"):
        counted = count_ops(model, INPUT_SHAPE, scale_dtype=scale_dtype).summary()["bits_per_weight"]
        assert rows[4][f"bits_per_weight_{scale_dtype}_scales"] == pytest.approx(counted)


def test_speedup_grows_with_group_size(rows):
    speedups = [rows[n]["potential_speedup"] for n in (1, 4, 64)]
    assert speedups == sorted(speedups) and len(set(speedups)) == 3
    assert rows[1]["potential_speedup"] == pytest.approx(4.0)
    assert rows[4]["paper_speedup"] == pytest.approx(1 / (0.25 / 4 + 0.75 / 16))


def test_named_group_sizes_have_no_paper_speedup():
    (row,) = cost_rows(
        archs=("resnet18",), group_sizes=("filter",), policies=("first_last_8bit",), scale_bits=(32,),
        input_shape=INPUT_SHAPE,
    )
    assert row["paper_speedup"] is None
    assert "bits_per_weight_fp16_scales" not in row
    assert "per-filter" in cost_table_markdown([row])


def test_markdown_has_the_n4_row_and_the_macs_heading(rows):
    markdown = cost_table_markdown(list(rows.values()))
    assert f"### resnet18, policy `ternarize_all`: {rows[4]['macs'] / 1e9:.2f} GMACs per image" in markdown
    n4_line = next(line for line in markdown.splitlines() if line.startswith("| N=4 |"))
    assert f"| {100 * rows[4]['mult_eliminated']:.2f} |" in n4_line
    assert "| N=1 | 0.00 |" in markdown


def test_csv_is_byte_identical_when_written_twice(tmp_path):
    config = {**SMALL, "group_sizes": (1, 4)}
    first = write_cost_table(tmp_path / "a", **config)
    second = write_cost_table(tmp_path / "b", **config)
    assert first["cost_table.csv"].read_bytes() == second["cost_table.csv"].read_bytes()
    assert first["cost_table.md"].read_bytes() == second["cost_table.md"].read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["cost_table.csv", "cost_table.md"]
    header, *lines = first["cost_table.csv"].read_text().splitlines()
    assert header.startswith("arch,policy,group_size,macs,multiplications,mult_eliminated")
    assert len(lines) == 2 and not math.isnan(float(lines[0].split(",")[-1]))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"scale_bits": (32, 4)}, r"scale_bits .* got \[4\]"), ({"archs": ()}, "archs must not be empty")],
)
def test_bad_axes_are_rejected_before_any_model_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cost_rows(**kwargs)
