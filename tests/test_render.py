"""The shared rendering helpers: one markdown table format, PNGs whose bytes depend on data only."""

from fgq_pipeline.render import markdown_table, new_figure, save_png


def test_markdown_table_aligns_named_text_columns_left_and_the_rest_right():
    rows = [["N=4", "90.00", "all"], ["N=8", "89.50", "—"]]
    table = markdown_table(["group", "top-1", "policy"], rows, text_columns=("group", "policy"))
    assert table.splitlines() == [
        "| group | top-1 | policy |",
        "|:---|---:|:---|",
        "| N=4 | 90.00 | all |",
        "| N=8 | 89.50 | — |",
    ]


def test_markdown_table_takes_another_left_marker_and_no_rows():
    table = markdown_table(["workload", "ms"], [], text_columns=["workload"], left="---")
    assert table == "| workload | ms |\n|---|---:|"


def test_png_has_no_software_tag_and_the_same_bytes_twice(tmp_path):
    def draw(path):
        figure = new_figure(figsize=(2.0, 2.0))
        figure.add_subplot().plot([0, 1], [1, 0])
        return save_png(figure, path, dpi=50)

    first, second = draw(tmp_path / "a.png"), draw(tmp_path / "out" / "b.png")
    data = first.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data == second.read_bytes()
    assert b"Software" not in data and b"matplotlib" not in data.lower()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.png", "out"]
