"""The cache guard: a changed kernel source invalidates every cached entry (a cached caller would
otherwise keep linking the old kernel), an unchanged one leaves the cache alone."""

import os

from fgq_pipeline.kernels.numba_cache import CACHED_SOURCES, invalidate_if_changed, sources_digest


def test_a_changed_source_renews_every_sources_time_and_an_unchanged_one_does_not(tmp_path):
    caller, kernel = tmp_path / "caller.py", tmp_path / "kernel.py"
    caller.write_text("def f(): return g()\n")
    kernel.write_text("def g(): return 1\n")
    sources, stamp = (caller, kernel), tmp_path / "__pycache__" / "stamp"
    assert invalidate_if_changed(sources, stamp)  # no stamp yet: entries from before it may be stale
    assert stamp.read_text() == sources_digest(sources)
    for source in sources:
        os.utime(source, (1_000_000, 1_000_000))
    assert not invalidate_if_changed(sources, stamp)
    assert caller.stat().st_mtime == 1_000_000  # unchanged sources: cached entries stay valid
    kernel.write_text("def g(): return 2\n")
    os.utime(kernel, (1_000_000, 1_000_000))
    assert invalidate_if_changed(sources, stamp)
    assert caller.stat().st_mtime > 1_000_000  # the caller's cached entry no longer matches its file
    assert stamp.read_text() == sources_digest(sources)


def test_every_module_with_cached_kernels_is_watched():
    cached = {path.name for path in CACHED_SOURCES if "cache=True" in path.read_text()}
    assert {"tiled_gemm.py", "direct_conv.py", "compiled_pass.py", "ceilings.py"} <= cached
    assert "simd.py" in {path.name for path in CACHED_SOURCES}  # the intrinsics the kernels inline
