"""One compiled pass per network: IntegerNet's graph run inside one Numba function.

For one input shape, :func:`compile_pass` turns the fused graph into a table of steps, computing
every kernel argument and allocating every buffer once; :class:`CompiledPass` then runs the table in
:func:`_run_steps` without returning to Python between layers (at batch 1 the node loop spent about
a third of ResNet-20's time in Python between its kernel calls). The steps call the node loop's
kernels with the node loop's arguments, so the outputs are the node loop's bit for bit. The float
steps between layers (quantization, shortcut, pooling) run their images in parallel: serial, they
were a tenth of the batch-64 ResNet-20's time on 2 threads.

A graph runs compiled when every conv is read in place, every linear is tiled and on the batched
kernel (rows the GEMV would take fall back), every tiled layer but the last node's has whole tiles of
16 outputs, and its float operations are ReLU, add, max pool, average pools over windows without
padding, adaptive average pools, flatten and the option-A shortcut. Otherwise :func:`compile_pass` returns
None and IntegerNet runs its node loop. A pass is not re-entrant: the buffers are its own.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from numba import njit, prange, typed

from .activations import ActivationFormat, quantize_kernel
from .direct_conv import PER_FILTER, PER_POSITION, direct_plan, per_filter_kernel, per_position_kernel
from .graph_ops import window_sum_kernel
from .packed import PackedLayer
from .tiled_gemm import (
    GEMV_MAX_ROWS,
    QUAD,
    SIGNED_OFFSET,
    TILE,
    TiledLayer,
    batched_kernel,
    conv_addressing,
    matrix_quad_offsets,
    padded_pixel_starts,
)

# A step is one int64 row of FIELDS (op first; f: float buffer, i: integer buffer, a: address array) and
# PARAMS float32 values:
#   QUANTIZE       f_in, i_out, B, H, W, C, pad_h, pad_w, C_out, offset        | scale, qmin, qmax
#   TILED          layer, i_in, a_rows, a_quad_offsets, signed, f_residual, relu, keep_floats, f_out,
#                  width, i_out, a_out_rows, direct, row_bytes         | act scale, next scale, next max
#                  (direct: 0 for the batched kernel, else the direct 3x3 kernel's kind; a_rows and a_quad_offsets
#                  are then its strip starts and strip rows, row_bytes the padded input's bytes per image row)
#   SUBSAMPLE_PAD  f_in, f_out, B, H, W, C, step, pad_channels
#   AVG_POOL       f_in, f_out, B, H, W, C, kh, kw, sh, sw                      | window area
#   ADAPTIVE_POOL  f_in, f_out, B, H, W, C, out_h, out_w
#   MAX_POOL       f_in, f_out, B, H, W, C, kh, kw, sh, sw, ph, pw
#   FLATTEN        f_in, f_out, B, H, W, C
#   ADD            f_a, f_b, f_out, size;  RELU  f_in, f_out, size
QUANTIZE, TILED, SUBSAMPLE_PAD, AVG_POOL, ADAPTIVE_POOL, MAX_POOL, FLATTEN, ADD, RELU = range(9)
FIELDS = 16
PARAMS = 3
NONE = 0  # buffer 0 of each list is empty: "no residual", "no integer outputs", "no float outputs"


class CompiledPass:
    """Callable on float32 NCHW images of one shape; returns float32 logits [B, classes]."""

    def __init__(self, steps, params, floats, integers, addresses, layers, input_buffer, output_buffer,
                 input_shape, output_columns):
        self._steps, self._params = np.asarray(steps, dtype=np.int64), np.asarray(params, dtype=np.float32)
        self._floats, self._integers, self._addresses = floats, integers, addresses
        self._layers = layers
        self._input, self._output = input_buffer, output_buffer
        self.input_shape, self._output_columns = input_shape, output_columns

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.shape != self.input_shape:
            raise ValueError(f"this pass runs images of shape {self.input_shape}, got {images.shape}")
        batch, channels, height, width = images.shape
        np.copyto(self._floats[self._input].reshape(batch, height, width, channels), images.transpose(0, 2, 3, 1))
        _run_steps(self._steps, self._params, self._floats, self._integers, self._addresses, *self._layers)
        logits = self._floats[self._output].reshape(batch, -1)
        return logits[:, :self._output_columns].copy()  # the buffer is the pass's, reused by the next call


def compile_pass(plan: list[dict], layers: dict[str, PackedLayer], tiled: dict[str, TiledLayer],
                 handoffs: dict[str, tuple[PackedLayer, bool]], release: list[list[str]],
                 input_shape: tuple[int, int, int, int]) -> CompiledPass | None:
    """The pass for images of ``input_shape`` (NCHW), or None where the graph needs the node loop."""
    try:
        return _Builder(layers, tiled, handoffs, input_shape[0]).build(plan, release, input_shape)
    except _NodeLoop:
        return None


class _NodeLoop(Exception):
    """A node the compiled pass does not run."""


class _Builder:
    """Steps and buffers, values tracked as NHWC shapes ([B, C] as [B, 1, 1, C]); a buffer returns to
    its pool after its value's last reader and is reused by a later value of the same size."""

    def __init__(self, layers, tiled, handoffs, batch):
        self.layers, self.tiled, self.handoffs, self.batch = layers, tiled, handoffs, batch
        self.steps, self.params = [], []
        self.floats, self.integers, self.addresses = [np.empty(0, np.float32)], [np.empty(0, np.uint8)], []
        self.address_index = {}  # id of an address array (each kept alive in addresses) -> its index
        self.free = defaultdict(list)  # pool key -> free buffer indices
        self.values = {}  # value -> (float buffer, shape)
        self.handed = {}  # value -> integer buffer its producer stored for the convs reading it
        self.layer_index = {}

    def build(self, plan, release, input_shape):
        batch, channels, height, width = input_shape
        input_buffer = None
        for index, node in enumerate(plan):
            op, name = node["op"], node["output"]
            if op == "input":
                shape = (batch, height, width, channels)
                input_buffer = self._float_buffer(shape)
                self.values[name] = (input_buffer, shape)
            elif op in ("conv", "linear"):
                self._layer_step(node, last=index == len(plan) - 1)
            else:
                self._float_step(node)
            for value in release[index]:
                self._release(value)
        output, shape = self.values[plan[-1]["output"]]
        return CompiledPass(self.steps, self.params, typed.List(self.floats), typed.List(self.integers),
                            typed.List(self.addresses), self._layer_lists(), input_buffer, output, input_shape,
                            shape[3])

    def _layer_step(self, node, last):
        layer, tiled = self.layers[node["layer"]], self.tiled.get(node["layer"])
        if tiled is None or (layer.out_channels % TILE and not last):
            raise _NodeLoop
        source, (x_buffer, x_shape) = node["inputs"][0], self.values[node["inputs"][0]]
        kind, row_bytes = 0, 0
        if layer.kind == "linear":
            if tiled.gemv is not None and self.batch < GEMV_MAX_ROWS:
                raise _NodeLoop
            padded, quantize_buffer = self._quantize(x_buffer, x_shape, layer.activation, (0, 0), x_shape[3])
            row_starts = np.arange(self.batch, dtype=np.int64) * x_shape[3]
            quad_offsets, out_hw = matrix_quad_offsets(tiled.weights.shape[1]), (1, 1)
        else:
            if tiled.in_channels % QUAD:
                raise _NodeLoop
            quantize_buffer = None
            if source in self.handed:
                integers, _ = self.handed[source]
                padded = (integers, (self.batch, x_shape[1] + 2 * layer.padding[0], x_shape[2] + 2 * layer.padding[1],
                                     x_shape[3]))
            else:
                padded, quantize_buffer = self._quantize(x_buffer, x_shape, layer.activation, layer.padding,
                                                         tiled.in_channels)
            out_hw, row_starts, quad_offsets = conv_addressing(padded[1], layer.kernel_size, layer.stride,
                                                               layer.dilation)
            direct = direct_plan(tiled.weights, tiled.group_ends, padded[1], layer.kernel_size, layer.stride,
                                 layer.dilation)
            if direct is not None:
                kind, row_starts, quad_offsets = direct
                row_bytes = padded[1][2] * padded[1][3]
        width = tiled.weights.shape[0] * TILE
        out_shape = (self.batch, *out_hw, layer.out_channels)
        residual = self.values[node["inputs"][1]][0] if node.get("residual") else NONE
        consumer, keep_floats = self.handoffs.get(node["output"], (None, True))
        out_floats = self._float_buffer((self.batch, *out_hw, width)) if keep_floats else NONE
        out_integers, integer_starts, next_scale, next_max = NONE, row_starts, 1.0, 0.0
        if consumer is not None:
            pad_h, pad_w = consumer.padding
            shape = (self.batch, out_hw[0] + 2 * pad_h, out_hw[1] + 2 * pad_w, layer.out_channels)
            key = ("handoff", shape, pad_h, pad_w)
            out_integers = self._integer_buffer(key, shape)
            integer_starts = padded_pixel_starts(shape, pad_h, pad_w)
            next_scale, next_max = consumer.activation.scale, consumer.activation.integer_range[1]
            self.handed[node["output"]] = (out_integers, key)
        signed = layer.activation.signed
        self._step([TILED, self._layer(node["layer"]), padded[0], self._address(row_starts),
                    self._address(quad_offsets), signed, residual, node.get("relu", False), keep_floats, out_floats,
                    width, out_integers, self._address(integer_starts), kind, row_bytes],
                   [layer.activation.scale, next_scale, next_max])
        if quantize_buffer is not None:
            self.free[quantize_buffer[0]].append(quantize_buffer[1])
        self.values[node["output"]] = (out_floats, out_shape)

    def _float_step(self, node):
        op, name = node["op"], node["output"]
        source, shape = self.values[node["inputs"][0]]
        if source == NONE:
            raise _NodeLoop
        batch, height, width, channels = shape
        if op == "flatten" and (height, width) == (1, 1):  # the same values in the same order
            self.values[name] = (source, shape)
            return
        if op == "flatten":
            shape = (batch, 1, 1, height * width * channels)
            out = self._float_buffer(shape)
            self._step([FLATTEN, source, out, batch, height, width, channels], [])
        elif op == "adaptive_avgpool":
            shape = (batch, *node["output_size"], channels)
            out = self._float_buffer(shape)
            self._step([ADAPTIVE_POOL, source, out, batch, height, width, channels, *node["output_size"]], [])
        elif op in ("relu", "add"):
            other = self.values[node["inputs"][-1]][0]
            if other == NONE:
                raise _NodeLoop
            out = self._float_buffer(shape)
            self._step([RELU, source, out, batch * height * width * channels] if op == "relu"
                       else [ADD, source, other, out, batch * height * width * channels], [])
        elif op == "subsample_pad":
            step, pad = node["subsample"], node["pad_channels"]
            shape = (batch, -(-height // step), -(-width // step), channels + 2 * pad)
            out = self._float_buffer(shape)
            self._step([SUBSAMPLE_PAD, source, out, batch, height, width, channels, step, pad], [])
        else:
            kernel, stride, padding = node["kernel"], node["stride"], node["padding"]
            if op == "avgpool" and any(padding):
                raise _NodeLoop
            shape = (batch, (height + 2 * padding[0] - kernel[0]) // stride[0] + 1,
                     (width + 2 * padding[1] - kernel[1]) // stride[1] + 1, channels)
            out = self._float_buffer(shape)
            if op == "maxpool":
                self._step([MAX_POOL, source, out, batch, height, width, channels, *kernel, *stride, *padding], [])
            else:
                self._step([AVG_POOL, source, out, batch, height, width, channels, *kernel, *stride],
                           [kernel[0] * kernel[1]])
        self.values[name] = (out, shape)

    def _quantize(self, buffer, shape, activation: ActivationFormat, padding, channels):
        """A step writing the layer's integer input (signed values offset to unsigned bytes, as the
        tiled kernels take them); returns (buffer, padded shape) and the pool entry to free after."""
        if buffer == NONE:
            raise _NodeLoop
        batch, height, width, depth = shape
        padded_shape = (batch, height + 2 * padding[0], width + 2 * padding[1], channels)
        key = ("quantize", int(np.prod(padded_shape)))
        out = self._integer_buffer(key, padded_shape)
        qmin, qmax = activation.integer_range
        self._step([QUANTIZE, buffer, out, batch, height, width, depth, *padding, channels,
                    SIGNED_OFFSET if activation.signed else 0], [activation.scale, qmin, qmax])
        return (out, padded_shape), (key, out)

    def _step(self, fields, params):
        self.steps.append([int(value) for value in fields] + [0] * (FIELDS - len(fields)))
        self.params.append(list(params) + [0.0] * (PARAMS - len(params)))

    def _float_buffer(self, shape):
        key = ("float", int(np.prod(shape)))
        if self.free[key]:
            return self.free[key].pop()
        self.floats.append(np.zeros(key[1], dtype=np.float32))
        return len(self.floats) - 1

    def _integer_buffer(self, key, shape):
        """Handed-over buffers are pooled by shape and padding: their borders stay integer 0."""
        if self.free[key]:
            return self.free[key].pop()
        self.integers.append(np.zeros(int(np.prod(shape)), dtype=np.uint8))
        return len(self.integers) - 1

    def _release(self, value):
        buffer, _ = self.values.pop(value)
        if buffer != NONE and all(other != buffer for other, _ in self.values.values()):  # flatten aliases
            self.free[("float", self.floats[buffer].size)].append(buffer)
        if value in self.handed:
            buffer, key = self.handed.pop(value)
            self.free[key].append(buffer)

    def _address(self, array):
        """Index of a read-only int64 address array; the cached conv addressing is shared, not copied."""
        if id(array) not in self.address_index:
            self.addresses.append(_readonly(array))
            self.address_index[id(array)] = len(self.addresses) - 1
        return self.address_index[id(array)]

    def _layer(self, name):
        if name not in self.layer_index:
            self.layer_index[name] = len(self.layer_index)
        return self.layer_index[name]

    def _layer_lists(self):
        names = sorted(self.layer_index, key=self.layer_index.get)
        tiles = [self.tiled[name] for name in names]
        return tuple(typed.List([getattr(tile, field) for tile in tiles])
                     for field in ("weights", "scales", "offsets", "group_ends", "bias"))


@njit(cache=True)
def _run_steps(steps, params, floats, integers, addresses, weights, scales, offsets, group_ends, biases):
    """The steps in order (fields: the table above); buffers are flat, their shapes in the steps."""
    for i in range(steps.shape[0]):
        s, p = steps[i], params[i]
        op = s[0]
        if op == QUANTIZE:
            batch, height, width, depth, pad_h, pad_w, channels = s[3], s[4], s[5], s[6], s[7], s[8], s[9]
            quantize_kernel(floats[s[1]].reshape((batch, height, width, depth)), p[0], p[1], p[2], pad_h, pad_w,
                            s[10], integers[s[2]].reshape((batch, height + 2 * pad_h, width + 2 * pad_w, channels)))
        elif op == TILED:
            layer, width, kind = s[1], s[10], s[13]
            out = floats[s[9]]
            out = out.reshape((out.size // width, width))
            if kind == PER_POSITION:
                per_position_kernel(integers[s[2]], addresses[s[3]], addresses[s[4]], s[14], weights[layer],
                                    scales[layer], offsets[layer], s[5] != 0, biases[layer], p[0], floats[s[6]],
                                    s[7] != 0, s[8] != 0, integers[s[11]], addresses[s[12]], p[1], p[2], out)
            elif kind == PER_FILTER:
                per_filter_kernel(integers[s[2]], addresses[s[3]], addresses[s[4]], s[14], weights[layer],
                                  scales[layer], offsets[layer], s[5] != 0, biases[layer], p[0], floats[s[6]],
                                  s[7] != 0, s[8] != 0, integers[s[11]], addresses[s[12]], p[1], p[2], out)
            else:
                batched_kernel(integers[s[2]], addresses[s[3]], addresses[s[4]], weights[layer], scales[layer],
                               offsets[layer], group_ends[layer], s[5] != 0, biases[layer], p[0], floats[s[6]],
                               s[7] != 0, s[8] != 0, integers[s[11]], addresses[s[12]], p[1], p[2], out)
        elif op == SUBSAMPLE_PAD:
            _subsample_pad(floats[s[1]].reshape((s[3], s[4], s[5], s[6])), s[7], s[8], floats[s[2]])
        elif op == AVG_POOL:
            _average_pool(floats[s[1]].reshape((s[3], s[4], s[5], s[6])), s[7], s[8], s[9], s[10], p[0],
                          floats[s[2]])
        elif op == ADAPTIVE_POOL:
            _adaptive_average_pool(floats[s[1]].reshape((s[3], s[4], s[5], s[6])), s[7], s[8], floats[s[2]])
        elif op == FLATTEN:
            batch, height, width, channels = s[3], s[4], s[5], s[6]
            floats[s[2]].reshape((batch, channels, height, width))[:] = \
                floats[s[1]].reshape((batch, height, width, channels)).transpose((0, 3, 1, 2))
        elif op == MAX_POOL:
            _max_pool(floats[s[1]].reshape((s[3], s[4], s[5], s[6])), s[7], s[8], s[9], s[10], s[11], s[12],
                      floats[s[2]])
        elif op == ADD:
            a, b, out = floats[s[1]], floats[s[2]], floats[s[3]]
            for j in range(s[4]):
                out[j] = a[j] + b[j]
        else:  # RELU
            x, out = floats[s[1]], floats[s[2]]
            for j in range(s[3]):
                out[j] = max(x[j], np.float32(0.0))


@njit(cache=True, parallel=True)
def _subsample_pad(x, step, pad, out_flat):
    """:func:`.graph_ops.subsample_pad` into ``out_flat``, images in parallel."""
    batch, height, width, channels = x.shape
    out = out_flat.reshape((batch, (height + step - 1) // step, (width + step - 1) // step, channels + 2 * pad))
    for b in prange(batch):
        out[b] = 0
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                out[b, i, j, pad:pad + channels] = x[b, i * step, j * step]


@njit(cache=True, parallel=True)
def _average_pool(x, rows, cols, stride_h, stride_w, area, out_flat):
    """:func:`.graph_ops.avg_pool` without padding: the window sums in the same order, one division."""
    batch, height, width, channels = x.shape
    out = out_flat.reshape((batch, (height - rows) // stride_h + 1, (width - cols) // stride_w + 1, channels))
    window_sum_kernel(x, rows, cols, stride_h, stride_w, out)
    for j in prange(out_flat.size):
        out_flat[j] = out_flat[j] / area


@njit(cache=True, parallel=True)
def _adaptive_average_pool(x, out_h, out_w, out_flat):
    """:func:`.graph_ops.adaptive_avg_pool`: per output cell the sum of its input cells in row-major
    order (the first cell, then one addition per cell), one division by their count; images in parallel."""
    batch, height, width, channels = x.shape
    out = out_flat.reshape((batch, out_h, out_w, channels))
    for b in prange(batch):
        for i in range(out_h):
            top, bottom = i * height // out_h, -(-(i + 1) * height // out_h)
            for j in range(out_w):
                left, right = j * width // out_w, -(-(j + 1) * width // out_w)
                count = np.float32((bottom - top) * (right - left))
                cell = out[b, i, j]
                cell[:] = x[b, top, left]
                for h in range(top, bottom):
                    for w in range(left, right):
                        if h != top or w != left:
                            for c in range(channels):
                                cell[c] += x[b, h, w, c]
                for c in range(channels):
                    cell[c] = cell[c] / count


@njit(cache=True, parallel=True)
def _max_pool(x, rows, cols, stride_h, stride_w, pad_h, pad_w, out_flat):
    """:func:`.graph_ops.max_pool`: padding never wins; images in parallel."""
    batch, height, width, channels = x.shape
    out_h, out_w = (height + 2 * pad_h - rows) // stride_h + 1, (width + 2 * pad_w - cols) // stride_w + 1
    out = out_flat.reshape((batch, out_h, out_w, channels))
    for b in prange(batch):
        out[b] = -np.inf
        for oh in range(out_h):
            for ow in range(out_w):
                cell = out[b, oh, ow]
                for i in range(rows):
                    h = oh * stride_h - pad_h + i
                    if 0 <= h < height:
                        for j in range(cols):
                            w = ow * stride_w - pad_w + j
                            if 0 <= w < width:
                                for c in range(channels):
                                    cell[c] = max(cell[c], x[b, h, w, c])


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # the conv addressing's arrays are: one compiled kernel variant for both
    return array
