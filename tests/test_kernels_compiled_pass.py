"""The compiled pass: IntegerNet's graph run inside one Numba function gives the node loop's outputs
bit for bit, reuses its buffers without carrying values from one call to the next, and leaves the
graphs it does not run to the node loop."""

import numpy as np
import pytest
import torch
from test_kernels_export import ARCHITECTURES, quantized

from fgq_pipeline.kernels import IntegerNet, export_packed
from fgq_pipeline.kernels.compiled_pass import CompiledPass
from fgq_pipeline.kernels.simd import FAST_DOT4

needs_fast_dot4 = pytest.mark.skipif(
    not FAST_DOT4, reason="the compiled pass runs the tiled kernels: CPUs with AVX2, AVX-512BW or AVX-512 VNNI")
# Whether each architecture runs compiled: FunctionalNet's padded average pool needs the node loop.
COMPILES = {"digits_cnn": True, "cifar_resnet8": True, "functional": False, "alexnet_narrow": True,
            "resnet18": True}
CASES = [case for case in ARCHITECTURES if case.id in COMPILES]


class NodeLoopNet(IntegerNet):
    node_by_node = True


@needs_fast_dot4
@pytest.mark.parametrize("build, size, channels, free_running", CASES)
def test_compiled_pass_gives_the_node_loops_outputs(tmp_path, request, build, size, channels, free_running):
    """Batches of 9 (a partial block of 8 rows), 2 and 1 (where the node loop's linears take the
    GEMV, the pass leaves the batch to it), each run twice with other images in between."""
    model = quantized(build, size, channels)
    images = torch.randn(9, channels, size, size, generator=torch.Generator().manual_seed(0)).numpy()
    others = -images
    architecture = request.node.callspec.id.split("-")[0]
    for scale_dtype in ("fp32", "fp16", "int8"):
        path = export_packed(model, tmp_path / f"{scale_dtype}.fgq", scale_dtype=scale_dtype)
        net, loop = IntegerNet.load(path), NodeLoopNet.load(path)
        compiled = {}
        for batch in (9, 2, 1):
            first = net(images[:batch])
            net(others[:batch])
            assert np.array_equal(net(images[:batch]), first)
            assert np.array_equal(first, loop(images[:batch])), (scale_dtype, batch)
            compiled[batch] = isinstance(net._passes[images[:batch].shape], CompiledPass)
        assert compiled[9] == COMPILES[architecture], scale_dtype
        if architecture == "alexnet_narrow":  # its ternary hidden linears: the GEMV's at 1 and 2 rows
            assert not compiled[1] and not compiled[2]


@needs_fast_dot4
def test_a_compiled_pass_runs_only_the_shape_it_was_built_for(tmp_path):
    model = quantized(*ARCHITECTURES[1].values[:3])
    net = IntegerNet.load(export_packed(model, tmp_path / "net.fgq"))
    images = np.zeros((2, 3, 16, 16), dtype=np.float32)
    net(images)
    with pytest.raises(ValueError, match=r"runs images of shape \(2, 3, 16, 16\), got \(3, 3, 16, 16\)"):
        net._passes[images.shape](np.zeros((3, 3, 16, 16), dtype=np.float32))
