"""The benchmark: settings validation, interleaved timing, workloads that compute the same layer
four ways, target evaluation and the report files."""

import os
import sys

import numba
import numpy as np
import pandas as pd
import pytest
import torch

from fgq_pipeline.bench import (
    background_cpus,
    conv_workload,
    linear_workload,
    network_workload,
    time_interleaved,
    torchvision_workload,
)
from fgq_pipeline.bench.ceilings import INT8_WEIGHTS, ceiling_label, kernel_ceilings
from fgq_pipeline.bench.report import (
    NUMBA_RATE,
    RATE,
    evaluate_targets,
    speedup_frame,
    timing_frame,
    write_bench_report,
)
from fgq_pipeline.bench.run import BenchSettings, Machine
from fgq_pipeline.bench.workloads import CANDIDATES, FP32, INT8, NUMBA, ORT, TORCHVISION

GOOD = dict(rounds=2, threads=(1,), batches=(1,), group_sizes=(4,),
            linear=({"name": "fc", "in_features": 32, "out_features": 8},), conv=(), network_depth=None,
            network_checkpoint=None, max_background_cpus=0.25, require_idle=False)


@pytest.mark.parametrize("change, message", [
    ({"rounds": 0}, "bench.rounds must be a positive integer, got 0"),
    ({"threads": (1, 4096)}, "asks for more threads"),
    ({"batches": ()}, "bench.batches is empty"),
    ({"group_sizes": (4.5,)}, "bench.group_sizes must be a positive integer, got 4.5"),
    ({"linear": ({"name": "fc", "in_features": 32},)}, r"bench.linear\[0\] must give exactly"),
    ({"conv": ({"name": "c", "in_channels": 4, "out_channels": 4, "kernel": 3, "stride": 0, "padding": 1,
                "size": 8},)}, r"bench.conv\[0\].stride must be a positive integer, got 0"),
    ({"max_background_cpus": -1.0}, "max_background_cpus must be >= 0"),
    ({"torchvision_networks": ({"arch": "resnet18"},)}, r"bench.torchvision_networks\[0\] must give exactly"),
    ({"torchvision_networks": ({"arch": "resnet", "size": 224},)},
     r"bench.torchvision_networks\[0\].arch must name a torchvision classifier .*got 'resnet'"),
    ({"torchvision_networks": ({"arch": "resnet18", "size": 0},)},
     r"bench.torchvision_networks\[0\].size must be a positive integer, got 0"),
    ({"gemv_scale_dtypes": ("bf16",)}, r"bench.gemv_scale_dtypes takes \['fp16', 'int8'\] \(fp32 always runs\), got 'bf16'"),
    ({"batched_scale_dtypes": ("fp32",)}, r"bench.batched_scale_dtypes takes \['fp16', 'int8'\] .*got 'fp32'"),
])
def test_bad_settings_are_refused_naming_the_value(change, message):
    with pytest.raises(ValueError, match=message):
        BenchSettings(**{**GOOD, **change})


def test_interleaved_timing_runs_every_candidate_each_round():
    calls = {"a": 0, "b": 0}

    def counter(name):
        def call():
            calls[name] += 1
        return call

    timings = time_interleaved({"a": counter("a"), "b": counter("b")}, rounds=5, warmup=2)
    assert calls == {"a": 7, "b": 7}
    for timing in timings.values():
        assert timing.rounds == 5 and 0 <= timing.min_ms <= timing.median_ms <= timing.max_ms


def test_background_load_is_measured_in_cpus():
    load = background_cpus(window_s=0.2)
    assert load is None or 0.0 <= load <= (os.cpu_count() or 1) + 0.5


def _outputs(workload):
    return {name: _numpy(call()) for name, call in workload.candidates.items()}


def _numpy(out):
    return out.detach().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


@pytest.mark.parametrize("scale_dtype", ["fp32", "int8"])
def test_linear_workload_candidates_compute_the_same_layer(scale_dtype):
    workload = linear_workload("fc", 64, 16, batch=3, group_size=4, scale_dtype=scale_dtype)
    assert workload.scales == scale_dtype
    assert workload.weight_macs == 3 * 64 * 16  # batch x in x out
    outputs = _outputs(workload)
    assert set(outputs) == set(CANDIDATES)
    reference = outputs[FP32]
    for name in (NUMBA, INT8, ORT):  # quantized versions of the same layer: close, not equal
        assert outputs[name].shape == reference.shape
        assert np.corrcoef(outputs[name].ravel(), reference.ravel())[0, 1] > 0.9, name


def test_conv_workload_candidates_compute_the_same_layer():
    workload = conv_workload("conv", 8, 8, kernel=3, stride=1, padding=1, size=6, batch=2, group_size=4)
    assert workload.weight_macs == 2 * 8 * 8 * 3 * 3 * 6 * 6  # batch x out x in x k x k x out_h x out_w
    outputs = _outputs(workload)
    reference = outputs[FP32].transpose(0, 2, 3, 1)  # the integer path runs NHWC
    for name, out in outputs.items():
        out = out if name == NUMBA else out.transpose(0, 2, 3, 1)
        assert out.shape == reference.shape
        assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > 0.9, name


def test_network_workload_runs_the_whole_resnet_three_ways():
    workload = network_workload(depth=8, batch=2, group_size=4, checkpoint=None)
    outputs = _outputs(workload)
    assert workload.shape.startswith("random")
    assert {out.shape for out in outputs.values()} == {(2, 10)}
    assert workload.potential_speedup > 1


def test_torchvision_workload_runs_the_whole_network_three_ways():
    workload = torchvision_workload("resnet18", size=32, group_size=4)
    outputs = _outputs(workload)
    assert (workload.name, workload.kind, workload.batch) == ("torchvision_resnet18", TORCHVISION, 1)
    assert {out.shape for out in outputs.values()} == {(1, 1000)}
    for name in (NUMBA, INT8):  # ternarized and int8 random weights: the same network, roughly
        assert np.corrcoef(outputs[name].ravel(), outputs[FP32].ravel())[0, 1] > 0.7, name


def test_torchvision_networks_are_timed_at_the_lowest_thread_count_into_the_report(monkeypatch, tmp_path):
    from fgq_pipeline.bench import run

    monkeypatch.setattr(run, "compile_and_cache_load_seconds", lambda: (1.0, 0.1))  # the smoke repro measures it
    monkeypatch.setattr(run, "background_cpus", lambda: 0.0)
    threads = (1, 2) if min(os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS) >= 2 else (1,)
    settings = BenchSettings(**{**GOOD, "rounds": 1, "threads": threads,
                                "torchvision_networks": ({"arch": "resnet18", "size": 32},)})
    rows, machine = run.run_benchmark(settings)
    tv_rows = [row for row in rows if row["workload"] == "torchvision_resnet18"]
    assert {(row["candidate"], row["threads"]) for row in tv_rows} == {(name, 1) for name in CANDIDATES}
    assert all(row["median_ms"] > 0 and row["batch"] == 1 for row in tv_rows)
    _, paths = write_bench_report(rows, machine, tmp_path)
    one_thread = paths["markdown"].read_text().split("## 2 threads")[0]
    assert "| torchvision_resnet18 | random, 3x32x32 images | 1 | 4 | fp32 |" in one_thread


def _rows(numba_ms: float, int8_scales_ms: float | None = None, threads: int = 1) -> list[dict]:
    cells = [("linear", "fc", 1, "fp32", numba_ms), ("linear", "fc", 64, "fp32", numba_ms),
             ("network", "net", 1, "fp32", numba_ms), ("network", "net", 64, "fp32", numba_ms)]
    if int8_scales_ms is not None:
        cells.append(("linear", "fc", 1, "int8", int8_scales_ms))
    rows = []
    for kind, name, batch, scales, ternary_ms in cells:
        for candidate, ms in ((NUMBA, ternary_ms), (FP32, 10.0), (INT8, 2.0), (ORT, 4.0)):
            rows.append({"workload": name, "kind": kind, "shape": "s", "batch": batch, "group_size": 4,
                         "scales": scales, "potential_speedup": 9.1, "weight_macs": 6_000_000 * batch,
                         "threads": threads, "candidate": candidate, "median_ms": ms, "min_ms": ms, "max_ms": ms,
                         "rounds": 3, "note": ""})
    return rows


@pytest.mark.parametrize("numba_ms, met", [
    (1.0, {"gemv_vs_fp32": True, "gemv_vs_int8": True, "gemm_vs_fp32": True, "network_b1_vs_fp32": True,
           "network_b1_vs_ort_int8": True, "network_b64_vs_ort_int8": True}),
    (5.0, {"gemv_vs_fp32": False, "gemv_vs_int8": False, "gemm_vs_fp32": True, "network_b1_vs_fp32": True,
           "network_b1_vs_ort_int8": False, "network_b64_vs_ort_int8": False}),
])
def test_targets_compare_the_worst_ratio_with_the_requirement(numba_ms, met):
    targets = {t["key"]: t for t in evaluate_targets(speedup_frame(_rows(numba_ms)), threads=1)}
    assert {key: t["met"] for key, t in targets.items()} == met
    assert targets["gemv_vs_fp32"]["measured"] == pytest.approx(10.0 / numba_ms)
    assert targets["gemv_vs_int8"]["measured"] == pytest.approx(2.0 / numba_ms)
    assert targets["gemm_vs_fp32"]["worst_case"] == "fc batch 64"
    assert targets["network_b1_vs_ort_int8"]["measured"] == pytest.approx(4.0 / numba_ms)
    assert targets["network_b64_vs_ort_int8"]["worst_case"] == "net batch 64"


def test_conv_target_judges_3x3_convs_at_batch_64_with_a_lower_bar_for_n4_fp32_scales():
    cells = [(4, "fp32", "64->64 3x3/1 @56x56", 2.2), (4, "int8", "64->64 3x3/1 @56x56", 2.2),
             (64, "fp32", "64->64 3x3/1 @56x56", 1.9), (64, "fp32", "1024->256 1x1/1 @14x14", 9.0)]
    rows = []
    for group_size, scales, shape, numba_ms in cells:
        for candidate, ms in ((NUMBA, numba_ms), (FP32, 10.0), (INT8, 2.0), (ORT, 4.0)):
            rows.append({**_rows(1.0)[0], "workload": f"conv {shape}", "kind": "conv", "shape": shape, "batch": 64,
                         "group_size": group_size, "scales": scales, "candidate": candidate, "median_ms": ms,
                         "min_ms": ms, "max_ms": ms})
    judged = {(t["group_size"], t["scales"]): t for t in evaluate_targets(speedup_frame(rows), threads=1)
              if t["key"] == "conv3x3_b64_vs_int8"}
    assert {key: (t["required"], t["met"]) for key, t in judged.items()} == {
        (4, "fp32"): (0.8, True), (4, "int8"): (1.0, False), (64, "fp32"): (1.0, True)}  # the 1x1 conv is left out
    assert judged[(4, "fp32")]["measured"] == pytest.approx(2.0 / 2.2)


def test_resnet50_target_judges_torchvision_resnet50_alone():
    rows = [{**row, "kind": TORCHVISION, "workload": f"torchvision_{arch}",
             "median_ms": row["median_ms"] if row["candidate"] != NUMBA else numba_ms}
            for arch, numba_ms in (("resnet18", 9.0), ("resnet50", 5.0))
            for row in _rows(1.0) if row["workload"] == "net"]
    targets = evaluate_targets(speedup_frame(_rows(1.0) + rows), threads=1)
    (resnet50,) = [t for t in targets if t["key"] == "resnet50_b1_vs_fp32"]
    assert resnet50["measured"] == pytest.approx(2.0) and resnet50["met"] is True
    assert resnet50["worst_case"] == "torchvision_resnet50 batch 1"
    (network,) = [t for t in targets if t["key"] == "network_b1_vs_fp32"]
    assert network["worst_case"] == "net batch 1"  # the CIFAR target leaves the torchvision networks out


def test_narrower_scales_get_their_own_gemv_targets_and_metrics(tmp_path):
    """fp32-scale rows keep their targets and metric names; int8-scale GEMV rows are judged apart."""
    targets = evaluate_targets(speedup_frame(_rows(5.0, int8_scales_ms=1.0)), threads=1)
    gemv = {t["scales"]: t for t in targets if t["key"] == "gemv_vs_fp32"}
    assert gemv["fp32"]["met"] is False and gemv["int8"]["met"] is True
    assert gemv["int8"]["measured"] == pytest.approx(10.0)
    assert {t["scales"] for t in targets if t["key"] != "gemv_vs_fp32" and t["key"] != "gemv_vs_int8"} == {"fp32"}
    machine = Machine("test cpu", 2, 0.0, 0.0, 0.25, compile_s=3.0, cache_load_s=0.2)
    summary, paths = write_bench_report(_rows(5.0, int8_scales_ms=1.0), machine, tmp_path)
    assert summary["gemv_vs_fp32.n4.t1"] == pytest.approx(2.0) and summary["gemv_vs_fp32.n4.t1.int8"] == pytest.approx(10.0)
    assert "| fc | s | 1 | 4 | int8 | 1.000 (1.000-1.000) | 10.000" in paths["markdown"].read_text()


def test_report_files_and_summary(tmp_path):
    machine = Machine("test cpu", 2, 0.01, 0.5, 0.25, compile_s=3.0, cache_load_s=0.2)
    summary, paths = write_bench_report(_rows(2.0), machine, tmp_path)
    assert summary["idle"] is False and summary["gemv_vs_fp32.n4.t1"] == pytest.approx(5.0)
    assert len(pd.read_csv(paths["csv"])) == 16
    markdown = paths["markdown"].read_text()
    assert "BUSY" in markdown and "| fc | s | 1 | 4 | fp32 | 2.000 (2.000-2.000) | 10.000" in markdown
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_busy_machine_is_refused_when_idle_is_required(monkeypatch):
    from fgq_pipeline.bench import run

    monkeypatch.setattr(run, "background_cpus", lambda: 1.5)
    with pytest.raises(RuntimeError, match=r"other processes use 1.50 CPUs .*bench.require_idle=false"):
        run.check_idle(BenchSettings(**{**GOOD, "require_idle": True}), "before")
    assert run.check_idle(BenchSettings(**GOOD), "before") == 1.5  # warns and times anyway


@pytest.mark.parametrize("build", [
    lambda: linear_workload("fc", 64, 16, batch=3, group_size=4),
    lambda: conv_workload("conv", 8, 8, kernel=3, stride=1, padding=1, size=6, batch=2, group_size=4),
    lambda: network_workload(depth=8, batch=4, group_size=4, checkpoint=None),
], ids=["linear", "conv", "network"])
def test_onnxruntime_int8_computes_the_float_model_to_int8_precision(build):
    pytest.importorskip("onnxruntime")
    workload = build()
    assert ORT not in workload.skipped
    outputs = _outputs(workload)
    out, reference = outputs[ORT], outputs[FP32]
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert np.linalg.norm(out - reference) / np.linalg.norm(reference) < 0.05
    if workload.kind == "network":
        assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.75
    (set_threads,) = workload.on_threads  # the bench selects a session per thread count
    set_threads(2)
    assert workload.candidates[ORT].session.get_session_options().intra_op_num_threads == 2


def test_missing_onnxruntime_is_a_skip_reason_and_the_report_still_renders(monkeypatch, tmp_path):
    from fgq_pipeline.bench import run

    for name in [name for name in sys.modules if name == "onnxruntime" or name.startswith("onnxruntime.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import onnxruntime(.x) now raises ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setattr(run, "compile_and_cache_load_seconds", lambda: (1.0, 0.1))
    monkeypatch.setattr(run, "background_cpus", lambda: 0.0)
    rows, machine = run.run_benchmark(BenchSettings(**{**GOOD, "rounds": 1}))
    reason = "onnxruntime is not installed: pip install 'fgq-pipeline[bench]'"
    (ort_row,) = [row for row in rows if row["candidate"] == ORT]
    assert ort_row["median_ms"] is None and ort_row["note"] == reason
    _, paths = write_bench_report(rows, machine, tmp_path)
    markdown = paths["markdown"].read_text()
    assert f"- ORT int8: n/a in 1 cell: {reason}" in markdown
    (fc_line,) = [line for line in markdown.splitlines() if line.startswith("| fc |")]
    cells = [cell.strip() for cell in fc_line.strip("|").split("|")]
    assert cells[8] == "n/a" and cells[11] == "n/a"  # ORT int8 ms, vs ORT int8
    assert pd.read_csv(paths["csv"]).query("candidate == @ORT").note.tolist() == [reason]


def test_weight_mac_rate_is_macs_per_median_second_per_thread(tmp_path):
    rows = _rows(2.0, threads=2)  # 6e6 weight-MACs per image
    timings = timing_frame(rows).set_index(["workload", "batch", "candidate"])
    assert timings.loc[("fc", 1, NUMBA), RATE] == pytest.approx(6e6 / 2e-3 / 2 / 1e9)  # 1.5 G/s per core
    assert timings.loc[("fc", 64, FP32), RATE] == pytest.approx(64 * 6e6 / 10e-3 / 2 / 1e9)
    assert timings.loc[("fc", 1, ORT), "numba_speedup"] == pytest.approx(4.0 / 2.0)
    cells = speedup_frame(rows).set_index(["workload", "batch"])
    assert cells.loc[("fc", 1), NUMBA_RATE] == pytest.approx(1.5)
    assert cells.loc[("fc", 1), "speedup_vs_ort_int8"] == pytest.approx(2.0)
    machine = Machine("test cpu", 2, 0.0, 0.0, 0.25, compile_s=3.0, cache_load_s=0.2)
    _, paths = write_bench_report(rows, machine, tmp_path)
    assert "| 5.00x | 1.00x | 2.00x | 1.50 | 9.1x |" in paths["markdown"].read_text()
    assert pd.read_csv(paths["csv"])[RATE].max() == pytest.approx(64 * 6e6 / 2e-3 / 2 / 1e9)


def test_bounds_section_sets_each_batched_conv_against_its_ceiling(tmp_path):
    """A layer's ceiling follows its scales and N; ceiling / torch int8 says whether a target can be met."""
    rows = []
    for scales, numba_ms in (("fp32", 4.0), ("int8", 1.0)):
        for candidate, ms in ((NUMBA, numba_ms), (FP32, 10.0), (INT8, 2.0), (ORT, 4.0)):
            rows.append({"workload": "c3", "kind": "conv", "shape": "64x64x3x3", "batch": 64, "group_size": 4,
                         "scales": scales, "potential_speedup": 4.0, "weight_macs": 2e9, "threads": 1,
                         "candidate": candidate, "median_ms": ms, "min_ms": ms, "max_ms": ms, "rounds": 3, "note": ""})
    ceilings = {INT8_WEIGHTS: 1200.0, "ternary N=4, float scales": 600.0}  # torch int8 runs at 1000 G/s
    machine = Machine("test cpu", 2, 0.0, 0.0, 0.25, compile_s=3.0, cache_load_s=0.2, ceilings=ceilings)
    _, paths = write_bench_report(rows, machine, tmp_path)
    markdown = paths["markdown"].read_text()
    assert "| ternary N=4, float scales | 600.00 | 0.50x |" in markdown
    assert "| c3 | 64 | 4 | fp32 | 500.00 | 1000.00 | 500.00 | 600.00 | 0.60x |" in markdown
    assert "| c3 | 64 | 4 | int8 | 2000.00 | 1000.00 | 500.00 | 1200.00 | 1.20x |" in markdown
    no_ceilings = Machine("test cpu", 2, 0.0, 0.0, 0.25, compile_s=3.0, cache_load_s=0.2)
    _, paths = write_bench_report(rows, no_ceilings, tmp_path)
    assert "What bounds" not in paths["markdown"].read_text()  # not measured (no AVX-512 VNNI): no section


def test_ceilings_cover_every_group_structure_a_layer_maps_to():
    """Timed, so only their presence is checked (a unit test does not judge speed)."""
    assert ceiling_label(4, "int8") == ceiling_label(64, "int8") == INT8_WEIGHTS
    assert ceiling_label(64, "fp16") == ceiling_label(64, "fp32") == "ternary N=64, float scales"
    ceilings = kernel_ceilings(products=10**9)
    if not ceilings:
        pytest.skip("this CPU has no AVX-512 VNNI: the ceilings are not measured")
    assert {INT8_WEIGHTS, ceiling_label(64, "fp32"), ceiling_label(4, "fp32")} == set(ceilings)
    assert all(np.isfinite(rate) and rate > 0 for rate in ceilings.values())
