"""512-bit vectors as Numba values, for the tiled kernels of :mod:`.tiled_gemm`.

Numba's loop vectoriser widens int8 products to int16 or int32 lanes and never emits AVX-512
VNNI's ``vpdpbusd`` (64 byte products, summed four at a time into 16 int32 lanes, in one
instruction): the earlier kernels peaked at about 27 G weights/s per core. These intrinsics hand
LLVM explicit vectors instead. Two Numba types carry an LLVM ``<16 x i32>`` or ``<16 x float>``
through ordinary ``@njit`` code (locals, loop-carried values), so accumulators stay in registers.

:func:`dot4` lowers to ``vpdpbusd`` where the CPU has AVX-512 VNNI; without it, on AVX-512BW or AVX2,
to two ``vpmaddwd`` of the lanes' even and odd bytes widened in place to 16 bits (:func:`_dot4_madd`);
elsewhere to plain vector IR (widen, multiply, add the four products of each lane). All compute
the same exact int32 sums. Indices are element offsets into C-contiguous 1-d arrays; the callers'
operand checks keep every load in bounds, as for the other kernels.
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

LANES = 16  # int32 or fp32 lanes of a 512-bit vector
BYTES = 4 * LANES


def target_has(feature: str) -> bool:
    """Whether Numba compiles for a CPU with ``feature`` (an LLVM name: "avx512vnni", "f16c"): the
    host's, or, when NUMBA_CPU_NAME / NUMBA_CPU_FEATURES pin another target (portable caches), those."""
    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return f"+{feature}" in (config.CPU_FEATURES or "").split(",")
    llvm.initialize_native_target()
    return bool(llvm.get_host_cpu_features().get(feature, False))


HAS_VNNI = target_has("avx512vnni")
HAS_F16C = target_has("f16c")  # without it LLVM widens fp16 through a runtime call Numba cannot link

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_BYTE_VECTOR = ir.VectorType(_I8, BYTES)
_WORD_VECTOR = ir.VectorType(_I16, BYTES // 2)
_INT_VECTOR = ir.VectorType(_I32, LANES)
_FLOAT_VECTOR = ir.VectorType(ir.FloatType(), LANES)
_CODE_BYTES = ir.VectorType(_I8, LANES)


class IntVector(types.Type):
    """16 int32 lanes (or, bit-cast, 64 bytes)."""

    def __init__(self) -> None:
        super().__init__(name="IntVector")


class FloatVector(types.Type):
    """16 fp32 lanes."""

    def __init__(self) -> None:
        super().__init__(name="FloatVector")


int_vector, float_vector = IntVector(), FloatVector()


@register_model(IntVector)
class _IntVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _INT_VECTOR)


@register_model(FloatVector)
class _FloatVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _FLOAT_VECTOR)


def _flat(array, *dtypes) -> bool:
    """Typing guard: a C-contiguous 1-d array of one of ``dtypes`` (the loads assume its element size)."""
    return isinstance(array, types.Array) and array.ndim == 1 and array.layout == "C" and array.dtype in dtypes


_BYTE_TYPES = (types.uint8, types.int8)


def _splat(builder, value, vector_type):
    """``value`` in every lane of ``vector_type``."""
    lane0 = builder.insert_element(ir.Constant(vector_type, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(lane0, ir.Constant(vector_type, None), ir.Constant(_INT_VECTOR, [0] * LANES))


def _element_pointer(context, builder, array_type, array, index, pointee):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), pointee.as_pointer())


def _load_floats(context, builder, array_type, array, index):
    """The 16 fp32 values at ``array[index:]``."""
    return builder.load(_element_pointer(context, builder, array_type, array, index, _FLOAT_VECTOR), align=4)


@intrinsic
def int_zeros(typingctx):
    return int_vector(), lambda context, builder, sig, args: ir.Constant(_INT_VECTOR, None)


@intrinsic
def float_zeros(typingctx):
    return float_vector(), lambda context, builder, sig, args: ir.Constant(_FLOAT_VECTOR, None)


@intrinsic
def load_bytes(typingctx, array, index):
    """The 64 bytes at ``array[index:]`` (any alignment)."""
    if not _flat(array, *_BYTE_TYPES):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_pointer(context, builder, sig.args[0], args[0], args[1], _INT_VECTOR), align=1)

    return int_vector(array, index), codegen


@intrinsic
def broadcast_quad(typingctx, array, index):
    """The 4 bytes at ``array[index:]`` repeated in all 16 lanes (folds into vpdpbusd's {1to16} operand)."""
    if not _flat(array, *_BYTE_TYPES):
        return None

    def codegen(context, builder, sig, args):
        quad = builder.load(_element_pointer(context, builder, sig.args[0], args[0], args[1], _I32), align=1)
        return _splat(builder, quad, _INT_VECTOR)

    return int_vector(array, index), codegen


def _dot4_vnni(builder, acc, unsigned_bytes, signed_bytes):
    signature = ir.FunctionType(_INT_VECTOR, [_INT_VECTOR] * 3)
    vpdpbusd = cgutils.get_or_insert_function(builder.module, signature, "llvm.x86.avx512.vpdpbusd.512")
    return builder.call(vpdpbusd, [acc, unsigned_bytes, signed_bytes])


def _dot4_generic(builder, acc, unsigned_bytes, signed_bytes):
    wide = ir.VectorType(_I32, BYTES)
    a = builder.zext(builder.bitcast(unsigned_bytes, _BYTE_VECTOR), wide)
    b = builder.sext(builder.bitcast(signed_bytes, _BYTE_VECTOR), wide)
    products = builder.mul(a, b)
    parts = [builder.shuffle_vector(products, products, ir.Constant(_INT_VECTOR, [4 * lane + q for lane in range(LANES)]))
             for q in range(4)]
    return builder.add(acc, builder.add(builder.add(parts[0], parts[1]), builder.add(parts[2], parts[3])))


def _dot4_madd(builder, acc, unsigned_bytes, signed_bytes, wide=True):
    """Each int32 lane holds bytes x0..x3; as two 16-bit words those are (x1:x0, x3:x2). Masking
    (unsigned) or shifting left and back (signed) leaves (x0, x2) widened in place, a right shift
    (x1, x3); ``vpmaddwd`` of the low halves gives x0*y0 + x2*y2, of the high halves x1*y1 + x3*y3.
    Every product of a byte and a byte fits 16 bits and every pair sum 32, so the sums are exact for
    any operands (``vpmaddubsw`` would saturate). ``wide``: one 512-bit ``vpmaddwd`` (AVX-512BW), else
    two 256-bit ones (AVX2).
    """
    words = ir.VectorType(_I16, BYTES // 2)
    eight = ir.Constant(words, [8] * (BYTES // 2))
    u, s = builder.bitcast(unsigned_bytes, words), builder.bitcast(signed_bytes, words)
    u_even, u_odd = builder.and_(u, ir.Constant(words, [0xFF] * (BYTES // 2))), builder.lshr(u, eight)
    s_even, s_odd = builder.ashr(builder.shl(s, eight), eight), builder.ashr(s, eight)
    return builder.add(acc, builder.add(_madd(builder, u_even, s_even, wide), _madd(builder, u_odd, s_odd, wide)))


def _madd(builder, a, b, wide):
    """``vpmaddwd`` over 32 words: 16 int32 sums of adjacent products."""
    if wide:
        signature = ir.FunctionType(_INT_VECTOR, [a.type, b.type])
        return builder.call(cgutils.get_or_insert_function(builder.module, signature, "llvm.x86.avx512.pmaddw.d.512"),
                            [a, b])
    half_words, half_ints = ir.VectorType(_I16, LANES), ir.VectorType(_I32, LANES // 2)
    pmaddwd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(half_ints, [half_words, half_words]),
                                             "llvm.x86.avx2.pmadd.wd")
    halves = []
    for start in (0, LANES):
        pick = ir.Constant(ir.VectorType(_I32, LANES), list(range(start, start + LANES)))
        halves.append(builder.call(pmaddwd, [builder.shuffle_vector(a, a, pick), builder.shuffle_vector(b, b, pick)]))
    return builder.shuffle_vector(halves[0], halves[1], ir.Constant(_INT_VECTOR, list(range(LANES))))


def _dot4_intrinsic(lower):
    def dot4(typingctx, acc, unsigned_bytes, signed_bytes):
        def codegen(context, builder, sig, args):
            return lower(builder, *args)

        return int_vector(int_vector, int_vector, int_vector), codegen

    return intrinsic(dot4)


dot4_vnni = _dot4_intrinsic(_dot4_vnni)
dot4_madd512 = _dot4_intrinsic(lambda builder, *args: _dot4_madd(builder, *args, wide=True))
dot4_madd256 = _dot4_intrinsic(lambda builder, *args: _dot4_madd(builder, *args, wide=False))
dot4_generic = _dot4_intrinsic(_dot4_generic)
# dot4(acc, a, b)[i] = acc[i] + sum_q u8(a[4i + q]) * s8(b[4i + q]) for the 16 lanes i: exact int32
# (neither vpdpbusd nor vpmaddwd saturates), the same sums on every path.
FAST_LOWERINGS = (("avx512vnni", dot4_vnni), ("avx512bw", dot4_madd512), ("avx2", dot4_madd256))  # best first


def dot4_lowering():
    """The fastest exact ``dot4`` the target CPU has an instruction for, and whether it is fast enough for
    the tiled kernels to beat the general ones (the plain-IR lowering is not: kernels README)."""
    for feature, lowering in FAST_LOWERINGS:
        if target_has(feature):
            return lowering, True
    return dot4_generic, False


dot4, FAST_DOT4 = dot4_lowering()


@intrinsic
def decode_codes(typingctx, array, index):
    """16 code bytes at ``array[index:]`` -> 64 int8 weights in {-1, 0, +1}.

    Byte j holds the 2-bit codes of output bytes j, j + 16, j + 32, j + 48 at bits 0, 2, 4, 6, so
    the decode is: repeat the 16 bytes four times, shift the k-th copy right by 2k (16-bit lanes;
    the mask drops what crosses a byte), keep 2 bits, sign-extend them with (c ^ 2) - 2.
    """
    if not _flat(array, types.uint8):
        return None

    def codegen(context, builder, sig, args):
        codes = builder.load(_element_pointer(context, builder, sig.args[0], args[0], args[1], _CODE_BYTES), align=1)
        repeated = builder.shuffle_vector(codes, codes, ir.Constant(ir.VectorType(_I32, BYTES),
                                                                    [j for _ in range(4) for j in range(LANES)]))
        shifts = ir.Constant(_WORD_VECTOR, [2 * (word // 8) for word in range(BYTES // 2)])
        fields = builder.bitcast(builder.lshr(builder.bitcast(repeated, _WORD_VECTOR), shifts), _BYTE_VECTOR)
        fields = builder.and_(fields, ir.Constant(_BYTE_VECTOR, [3] * BYTES))
        two = ir.Constant(_BYTE_VECTOR, [2] * BYTES)
        return builder.bitcast(builder.sub(builder.xor(fields, two), two), _INT_VECTOR)

    return int_vector(array, index), codegen


@intrinsic
def int_sub(typingctx, acc, array, index):
    """acc minus the 16 int32 at ``array[index:]``."""
    if not _flat(array, types.int32):
        return None

    def codegen(context, builder, sig, args):
        values = builder.load(_element_pointer(context, builder, sig.args[1], args[1], args[2], _INT_VECTOR), align=4)
        return builder.sub(args[0], values)

    return int_vector(int_vector, array, index), codegen


_SCALE_VECTORS = {  # how 16 stored scales load and widen to fp32 (fp16 arrives as its uint16 bit pattern)
    types.float32: (_FLOAT_VECTOR, lambda builder, v: v),
    types.uint16: (ir.VectorType(_I16, LANES),
                   lambda builder, v: builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), LANES)),
                                                    _FLOAT_VECTOR)),
    types.int8: (ir.VectorType(_I8, LANES), lambda builder, v: builder.sitofp(v, _FLOAT_VECTOR)),
}


def _scale_vector(builder, context, array_type, array, index):
    """16 stored scales at ``array[index:]``, widened to fp32 (exact for every stored dtype)."""
    stored, widen = _SCALE_VECTORS[array_type.dtype]
    return widen(builder, builder.load(_element_pointer(context, builder, array_type, array, index, stored), align=1))


def _add_product(builder, acc, sums, scale):
    product = builder.fmul(builder.sitofp(sums, _FLOAT_VECTOR), scale)  # no "contract": two roundings,
    return builder.fadd(acc, product)  # as the torch twin computes them (no FMA)


@intrinsic
def add_scaled(typingctx, acc, sums, scales, index):
    """acc + float(sums) * scales[index:index + 16]: one group's exact sums into the fp32 total.

    Scales may be stored as fp32 or fp16 (passed as a uint16 view: Numba has no CPU float16; needs
    F16C, see HAS_F16C); each widens to fp32 exactly. int8 scales belong to :func:`int_add_scaled`;
    they type here too because Numba prunes a ``multipliers is None`` branch only when it is None,
    so with int8 scales the GEMV's unused fp32 branch must still compile.
    """
    if not _flat(scales, *_SCALE_VECTORS):
        return None

    def codegen(context, builder, sig, args):
        acc, sums, array, index = args
        return _add_product(builder, acc, sums, _scale_vector(builder, context, sig.args[2], array, index))

    return float_vector(float_vector, int_vector, scales, index), codegen


@intrinsic
def int_add_scaled(typingctx, acc, sums, scales, index):
    """acc + sums * int32(scales[index:index + 16]), 16 int32 lanes, wrapping like vpmulld / vpaddd.

    int8 scales: a group's sum times its int8 scale, summed over the filter in int32, is the exact dot
    product with the int8 weights t * q; the loader's bound keeps the final sum in int32, so the
    wrap-around of an intermediate cannot change it.
    """
    if not _flat(scales, types.int8):
        return None

    def codegen(context, builder, sig, args):
        acc, sums, array, index = args
        stored = builder.load(_element_pointer(context, builder, sig.args[2], array, index, ir.VectorType(_I8, LANES)),
                              align=1)
        return builder.add(acc, builder.mul(sums, builder.sext(stored, _INT_VECTOR)))

    return int_vector(int_vector, int_vector, scales, index), codegen


@intrinsic
def affine(typingctx, acc, multiplier, bias, bias_index):
    """acc * multiplier + bias[bias_index:bias_index + 16], each operation rounded (no FMA)."""
    if multiplier != types.float32 or not _flat(bias, types.float32):
        return None

    def codegen(context, builder, sig, args):
        acc, multiplier, bias, bias_index = args
        shift = _load_floats(context, builder, sig.args[2], bias, bias_index)
        return builder.fadd(builder.fmul(acc, _splat(builder, multiplier, _FLOAT_VECTOR)), shift)

    return float_vector(float_vector, multiplier, bias, bias_index), codegen


@intrinsic
def add_loaded(typingctx, acc, array, index):
    """acc + array[index:index + 16] (fp32): a residual add in registers."""
    if not _flat(array, types.float32):
        return None

    def codegen(context, builder, sig, args):
        acc, array, index = args
        return builder.fadd(acc, _load_floats(context, builder, sig.args[1], array, index))

    return float_vector(float_vector, array, index), codegen


@intrinsic
def relu_lanes(typingctx, acc):
    """0 where a lane is below 0, else the lane: ``np.maximum(x, 0)`` (-0.0 and NaN pass unchanged)."""
    def codegen(context, builder, sig, args):
        zero = ir.Constant(_FLOAT_VECTOR, None)
        return builder.select(builder.fcmp_ordered("<", args[0], zero), zero, args[0])

    return float_vector(float_vector), codegen


@intrinsic
def store_floats(typingctx, out, index, acc):
    """out[index:index + 16] = acc."""
    if not _flat(out, types.float32):
        return None

    def codegen(context, builder, sig, args):
        out, index, acc = args
        builder.store(acc, _element_pointer(context, builder, sig.args[0], out, index, _FLOAT_VECTOR), align=4)
        return context.get_dummy_value()

    return types.none(out, index, float_vector), codegen


@intrinsic
def store_quantized(typingctx, out, index, acc, scale, qmax):
    """out[index:index + 16] = uint8(min(max(rint(acc / scale), 0), qmax)): the 16 outputs as the next
    layer's unsigned integer input, with ``activations.quantize_kernel``'s operations (fp32 division, round half
    to even, saturation)."""
    if scale != types.float32 or qmax != types.float32 or not _flat(out, types.uint8):
        return None

    def codegen(context, builder, sig, args):
        out, index, acc, scale, qmax = args
        roundeven = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_FLOAT_VECTOR, [_FLOAT_VECTOR]),
                                                   "llvm.roundeven.v16f32")
        steps = builder.call(roundeven, [builder.fdiv(acc, _splat(builder, scale, _FLOAT_VECTOR))])
        zero, top = ir.Constant(_FLOAT_VECTOR, None), _splat(builder, qmax, _FLOAT_VECTOR)
        steps = builder.select(builder.fcmp_ordered("<", steps, zero), zero, steps)
        steps = builder.select(builder.fcmp_ordered(">", steps, top), top, steps)
        stored = builder.trunc(builder.fptoui(steps, _INT_VECTOR), _CODE_BYTES)
        builder.store(stored, _element_pointer(context, builder, sig.args[0], out, index, _CODE_BYTES), align=1)
        return context.get_dummy_value()

    return types.none(out, index, float_vector, scale, qmax), codegen
