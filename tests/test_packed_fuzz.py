"""Fuzzing the packed-file loader (issue 12): a packed file is what a user ships and loads elsewhere,
so each of 10,000 seeded mutations of real packed files must either load or be refused with a
ValueError that names the file and says what is wrong -- never another exception, a crash, a hang
or a large allocation.

The mutations run in a subprocess (this file run as a script): a crash there fails the test instead
of killing pytest, and that process alone runs under an address-space limit (RLIMIT_AS), with the
loader's warnings raised as errors (an fp32 overflow while loading is a bug). Huge declared shapes are also loaded
under tracemalloc. Most structured mutations get a recomputed SHA-256 digest, as a buggy exporter
or a deliberate edit would write, so they reach the checks behind the digest. Case i of seed s
draws from ``default_rng([s, i])``; one case replays alone with
``python tests/test_packed_fuzz.py --workdir DIR --first i --cases 1 FILE...``.
"""

from __future__ import annotations

import argparse
import json
import resource
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from fgq_pipeline.kernels import IntegerNet
from fgq_pipeline.kernels.packed_file import _digest
from fgq_pipeline.kernels.scales import FP32_MAX

SEED = 12
CASES = 10_000
MIN_REFUSED = 0.9
HEAP_LIMIT = 64 * 2**20  # tracemalloc peak of one load of a huge declared shape
ADDRESS_SPACE_HEADROOM = 1024 * 2**20  # over the fuzzing process's size once warmed up
TRACED_SAMPLE = 200  # huge-shape loads run under tracemalloc
SLOWEST_LOAD_S = 2.0
TIMEOUT_S = 300
SHM = Path("/dev/shm")
REDIGEST = 0.75  # share of structured mutations written with a matching digest

# Raw JSON text, spliced in for these markers after serialization: nesting no parser should recurse
# into, and an integer longer than Python's int-to-str limit.
RAW_JSON = {"@deep@": "[" * 100_000 + "]" * 100_000, "@digits@": "9" * 5000}
EVIL = (0, -1, 1, 3, 2**31, 2**40, 2**63, 2**64, -2**63, 10**400, 1.5, -0.0, 1e308, 1e39, 1e-50, 5e-324,
        float("nan"), float("inf"), float("-inf"), True, False, None, "", "1", "x" * 10_000, [], [1], [1, 1],
        [2**40, 2**40], [-1, 1], [[1]], {}, {"a": 1}, "@deep@", "@digits@")
DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "BOOL", "F8_E4M3", "C64", "Q4", "")


@dataclass(frozen=True)
class Original:
    """A packed file as bytes, its safetensors header, data section, arrays and metadata."""

    raw: bytes
    header: dict
    data: bytes
    tensors: dict[str, np.ndarray]

    @classmethod
    def read(cls, path: Path) -> Original:
        raw = path.read_bytes()
        length = struct.unpack("<Q", raw[:8])[0]
        return cls(raw, json.loads(raw[8:8 + length]), raw[8 + length:], load_safetensors(raw))

    @property
    def meta(self) -> dict:
        return dict(self.header["__metadata__"])

    def layers(self) -> list:
        return json.loads(self.meta["layers"])

    def graph(self) -> list:
        return json.loads(self.meta["graph"])

    def names(self) -> list[str]:
        return [key for key in self.header if key != "__metadata__"]


def dumps(value: object) -> str:
    text = json.dumps(value)
    for marker, raw in RAW_JSON.items():
        text = text.replace(json.dumps(marker), raw)
    return text


def encode(header: object, data: bytes) -> bytes:
    text = dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def with_digest(rng: np.random.Generator, header: dict, data: bytes, chance: float = REDIGEST) -> bytes:
    """The file, and with probability ``chance`` a digest recomputed to match (where it still parses)."""
    blob = encode(header, data)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if rng.random() >= chance or not isinstance(meta, dict):
        return blob
    try:
        tensors = load_safetensors(blob)
    except Exception:  # noqa: BLE001 - an unreadable file keeps its stale digest (a panic is left to kill the run)
        return blob
    meta = {**meta, "sha256": _digest({k: v for k, v in meta.items() if k != "sha256"}, tensors)}
    return encode({**header, "__metadata__": meta}, data)


def with_meta(rng: np.random.Generator, original: Original, meta: object) -> bytes:
    return with_digest(rng, {**original.header, "__metadata__": meta}, original.data)


def evil(rng: np.random.Generator) -> object:
    return EVIL[rng.integers(len(EVIL))]


def pick(rng: np.random.Generator, items: list | tuple) -> object:
    return items[rng.integers(len(items))]


def truncated_json(rng: np.random.Generator, value: object) -> str:
    text = json.dumps(value)
    return text[:rng.integers(len(text))]


# Raw byte mutations (the digest is left as written).

def flip_bytes(rng, blob: bytes, start: int, stop: int) -> bytes:
    data = bytearray(blob)
    for index in rng.integers(start, stop, rng.integers(1, 5)):
        data[index] ^= int(rng.integers(1, 256))
    return bytes(data)


def header_end(original: Original) -> int:
    return len(original.raw) - len(original.data)


def flip_header_length(rng, original):
    return flip_bytes(rng, original.raw, 0, 8)


def header_length_beyond_file(rng, original):
    size = len(original.raw)
    length = pick(rng, (size - 7, size, size + 1, 2 * size, 100 * 2**20 + 8, 2**32, 2**63 - 1, 2**64 - 1))
    return struct.pack("<Q", length) + original.raw[8:]


def flip_header(rng, original):
    return flip_bytes(rng, original.raw, 8, header_end(original))


def flip_data(rng, original):
    return flip_bytes(rng, original.raw, header_end(original), len(original.raw))


def flip_anywhere(rng, original):
    return flip_bytes(rng, original.raw, 0, len(original.raw))


def truncate(rng, original):
    return original.raw[:rng.integers(len(original.raw))]


def append_bytes(rng, original):
    return original.raw + rng.bytes(int(rng.integers(1, 65)))


# The safetensors header: entries of the arrays.

def tensor_dtype(rng, original):
    header = json.loads(json.dumps(original.header))
    header[pick(rng, original.names())]["dtype"] = pick(rng, DTYPES) if rng.random() < 0.8 else evil(rng)
    return with_digest(rng, header, original.data)


def tensor_shape(rng, original):
    header = json.loads(json.dumps(original.header))
    entry = header[pick(rng, original.names())]
    shape = entry["shape"]
    entry["shape"] = pick(rng, (
        [2**40], [2**20, 2**20], [2**40, *shape[1:]], [2**32, 2**32, 2**32], [2**64 - 1], [-1, *shape[1:]], [],
        [0], [*shape, 1], shape[:-1], [int(np.prod(shape))], shape[::-1], [shape[0] + 1, *shape[1:]], [1.5], ["8"],
    )) if rng.random() < 0.9 else evil(rng)
    return with_digest(rng, header, original.data)


def tensor_offsets(rng, original):
    header = json.loads(json.dumps(original.header))
    entry = header[pick(rng, original.names())]
    start, stop = entry["data_offsets"]
    size = len(original.data)
    entry["data_offsets"] = pick(rng, (
        [stop, start], [start - 1, stop], [start + 1, stop + 1], [start, stop + 8], [-8, stop], [start, 2**64 - 1],
        [0, size], [size, size + stop - start], [start], [start, stop, stop], None,
    )) if rng.random() < 0.9 else evil(rng)
    return with_digest(rng, header, original.data)


def swap_offsets(rng, original):
    header = json.loads(json.dumps(original.header))
    names = original.names()
    first = pick(rng, names)
    same_size = [name for name in names if name != first and np.subtract(*header[name]["data_offsets"]) == np.subtract(
        *header[first]["data_offsets"])]
    second = pick(rng, same_size) if same_size and rng.random() < 0.5 else pick(rng, names)
    header[first]["data_offsets"], header[second]["data_offsets"] = (
        header[second]["data_offsets"], header[first]["data_offsets"])
    return with_digest(rng, header, original.data)


def swap_names(rng, original):
    header = json.loads(json.dumps(original.header))
    first, second = rng.choice(original.names(), 2, replace=False)
    header[first], header[second] = header[second], header[first]
    return with_digest(rng, header, original.data)


def tensor_entry(rng, original):
    header = json.loads(json.dumps(original.header))
    name = pick(rng, original.names())
    choice = rng.integers(6)
    if choice == 0:
        del header[name][pick(rng, ("dtype", "shape", "data_offsets"))]
    elif choice == 1:
        header[name][pick(rng, ("extra", "offsets", "dtype "))] = evil(rng)
    elif choice == 2:
        header[name] = evil(rng)
    elif choice == 3:
        header[pick(rng, ("extra.weights", f"{name}.copy", name.upper(), ""))] = header.pop(name)
    elif choice == 4:
        header[f"{name}.alias"] = dict(header[name])  # two names over the same bytes
    else:
        del header[name]
    return with_digest(rng, header, original.data)


# The metadata: format, version, digest, layers and graph JSON.

def format_version(rng, original):
    meta = original.meta
    choice = rng.integers(4)
    if choice == 0:
        meta["format_version"] = pick(rng, ("1", "2", "4", "0", "", "3.0", " 3", "03", "30", "-1", "3\n", "two",
                                            "9" * 30))
    elif choice == 1:
        meta["format"] = pick(rng, ("", "fgq-packed2", "FGQ-PACKED", "safetensors", "fgq-packed "))
    else:
        del meta[pick(rng, ("format", "format_version"))]
    return with_meta(rng, original, meta)


def metadata_keys(rng, original):
    meta = original.meta
    choice = rng.integers(5)
    if choice == 0:
        del meta[pick(rng, list(meta))]
    elif choice == 1:
        meta[pick(rng, ("extra", "format_version ", "sha512", "Layers"))] = pick(rng, ("", "1", "[]", "x" * 1000))
    elif choice == 2:
        meta["sha256"] = pick(rng, ("", "0" * 64, meta["sha256"].upper(), meta["sha256"][:-1], "x"))
    elif choice == 3:
        meta[pick(rng, list(meta))] = evil(rng)
    else:
        meta = evil(rng)
    return with_meta(rng, original, meta)


def layers_json(rng, original):
    layers = original.layers()
    index = rng.integers(len(layers))
    choice = rng.integers(8)
    if choice == 0:
        layers.insert(rng.integers(len(layers) + 1), dict(layers[index]))  # the same name twice
    elif choice == 1:
        layers[index]["name"] = pick(rng, [entry["name"] for entry in layers])
    elif choice == 2:
        layers.pop(index)
    elif choice == 3:
        layers[index]["name"] = pick(rng, ("renamed", layers[index]["name"] + ".", "", " "))
    elif choice == 4:
        rng.shuffle(layers)
    elif choice == 5:
        layers = pick(rng, ([], {}, None, "layers", 3, [None], [[]], "@deep@"))
    elif choice == 6:
        layers[index] = evil(rng)
    else:
        return with_meta(rng, original, {**original.meta, "layers": truncated_json(rng, layers)})
    return with_meta(rng, original, {**original.meta, "layers": dumps(layers)})


def edit_layer(rng, original, edit) -> bytes:
    layers = original.layers()
    edit(layers[rng.integers(len(layers))])
    return with_meta(rng, original, {**original.meta, "layers": dumps(layers)})


def layer_field(rng, original):
    def edit(entry):
        choice = rng.integers(4)
        if choice == 0:
            entry[pick(rng, list(entry))] = evil(rng)
        elif choice == 1:
            entry["activation"][pick(rng, ("scale", "bits", "signed"))] = evil(rng)
        elif choice == 2:
            del entry[pick(rng, list(entry))]
        else:
            entry[pick(rng, ("extra", "groupsize", "name "))] = evil(rng)

    return edit_layer(rng, original, edit)


def layer_shape(rng, original):
    def edit(entry):
        shape = entry["weight_shape"]
        position = int(rng.integers(len(shape)))
        entry["weight_shape"] = pick(rng, (
            [2**40, *shape[1:]], [shape[0], 2**40, *shape[2:]], [2**10] * len(shape), [2**20] * len(shape),
            [2**63, *shape[1:]], [2**64, *shape[1:]], [-shape[0], *shape[1:]], [0, *shape[1:]], shape[::-1],
            [*shape, 1], shape[:-1], [d + int(i == position) for i, d in enumerate(shape)],
            [d - int(i == position) for i, d in enumerate(shape)],
        ))

    return edit_layer(rng, original, edit)


def layer_geometry(rng, original):
    def edit(entry):
        field, values = pick(rng, (
            ("kind", ("conv", "linear", "Conv", "depthwise")),
            ("weight_format", ("ternary", "int8", "int4", "fp32")),
            ("scale_dtype", ("fp32", "fp16", "int8", "bf16", "float32")),
            ("group_size", (None, 0, 1, 2, 3, 4, 8, 16, 64, 65, 2**40, 4.0)),
            ("stride", (None, [1, 1], [2, 2], [1], [0, 1], [2**40, 1], [1, 1, 1])),
            ("padding", (None, [0, 0], [1, 1], [-1, 0], [2**40, 0], [0])),
        ))
        entry[field] = pick(rng, values)

    return edit_layer(rng, original, edit)


def activation(rng, original):
    def edit(entry):
        field, values = pick(rng, (
            ("scale", (0.0, -0.1, 1e39, 1e-50, 1e-45, 3.5e38, 10**400, float("nan"), float("inf"), True, "0.1", 2)),
            ("bits", (0, 1, 9, 16, 32, 2**70, 8.0, True, "8", None)),
            ("signed", (0, 1, "true", None, [])),
        ))
        entry["activation"][field] = pick(rng, values)

    return edit_layer(rng, original, edit)


def graph(rng, original):
    nodes = original.graph()
    index = rng.integers(len(nodes))
    values = [node["output"] for node in nodes]
    choice = rng.integers(10)
    if choice == 0:
        nodes.insert(index, {"op": pick(rng, ("softmax", "conv", "", "LAYER", "relu ", None, 1)),
                             "inputs": [pick(rng, values)], "output": "new"})
    elif choice == 1:
        nodes.insert(index, {"op": "add", "inputs": [pick(rng, values), pick(rng, values)], "output": "sum"})
    elif choice == 2:
        nodes[index]["inputs"] = [pick(rng, (nodes[index]["output"], "undefined", "", 0, None))]
    elif choice == 3:
        nodes.pop(index)
    elif choice == 4:
        node = nodes[index]
        node[pick(rng, list(node))] = evil(rng)
    elif choice == 5:
        node = nodes[index]
        if len(node) > 1 and rng.random() < 0.5:
            del node[pick(rng, [key for key in node if key != "op"])]
        else:
            node[pick(rng, ("layer", "kernel", "output_size", "extra"))] = 1
    elif choice == 6:
        nodes = pick(rng, (None, {}, [], "relu", 3, [[]], [None], "@deep@"))
    elif choice == 7:
        other = rng.integers(len(nodes))
        nodes[index], nodes[other] = nodes[other], nodes[index]
    elif choice == 8:
        layer_nodes = [node for node in nodes if "layer" in node]
        pick(rng, layer_nodes)["layer"] = pick(rng, ("missing", "", "features", 0, None))
    else:
        return with_meta(rng, original, {**original.meta, "graph": truncated_json(rng, nodes)})
    return with_meta(rng, original, {**original.meta, "graph": dumps(nodes)})


def arrays(rng, original):
    tensors = dict(original.tensors)
    names = sorted(tensors)
    name = pick(rng, names)
    array = tensors[name]
    choice = rng.integers(8)
    if choice == 0:
        other = pick(rng, names)
        tensors[name], tensors[other] = tensors[other], array
    elif choice == 1:
        tensors[name] = array.astype(pick(rng, (np.float64, np.float32, np.float16, np.int8, np.uint8, np.int32, bool)))
    elif choice == 2:
        tensors[name] = pick(rng, (array.reshape(-1), array[None], array.T, array.reshape(-1, 1)))
    elif choice == 3:
        del tensors[name]
    elif choice == 4:
        tensors[pick(rng, ("extra.weights", f"{name}.extra", "x"))] = array
    elif choice == 5:
        tensors[name] = array[:-1] if rng.random() < 0.5 or array.ndim == 1 else array[:, :-1]
    elif choice == 6:
        tensors[name] = array[:0]
    else:
        edited = array.copy()
        flat = edited.reshape(-1)
        if flat.dtype == np.uint8:
            flat[rng.integers(flat.size)] = pick(rng, (0b10, 0b10101010, 0xFF, 0b01_00_00_00))
        elif flat.dtype == np.int8:
            flat[rng.integers(flat.size)] = -128
        else:
            flat[rng.integers(flat.size)] = pick(rng, (np.nan, np.inf, -np.inf, 0, 1e30))
        tensors[name] = edited
    return save_arrays(rng, original, tensors)


SCALE_OF_SCALES_VALUES = (np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, 1e-38, 1e-40, 1e-45, 3e38, FP32_MAX, 1.0, 1e-3)


def scale_of_scales(rng, original):
    """A layer's fp32 scale-of-scales per filter: a bad value, shape or dtype, or one beside fp32 / fp16 scales."""
    tensors = dict(original.tensors)
    names = sorted(name for name in tensors if name.endswith(".scale_of_scales"))
    if not names or rng.random() < 0.1:
        layer = pick(rng, sorted(name.removesuffix(".bias") for name in tensors if name.endswith(".bias")))
        tensors[f"{layer}.scale_of_scales"] = np.ones(tensors[f"{layer}.bias"].shape, np.float32)
        return save_arrays(rng, original, tensors)
    name = pick(rng, names)
    edited = tensors[name].copy()
    choice = rng.integers(3)
    if choice == 0:
        edited[rng.integers(edited.size)] = pick(rng, SCALE_OF_SCALES_VALUES)
    elif choice == 1:
        edited = pick(rng, (edited[:-1], np.append(edited, edited[:1]), edited[None], edited.reshape(-1, 1),
                            edited[:0], edited[0]))
    else:
        edited = edited.astype(pick(rng, (np.float64, np.float16, np.int8, np.int32, np.uint8)))
    tensors[name] = edited
    return save_arrays(rng, original, tensors)


def save_arrays(rng, original, tensors: dict[str, np.ndarray], chance: float = REDIGEST) -> bytes:
    """The edited arrays with the original header, the digest recomputed with probability ``chance``."""
    tensors = {key: np.ascontiguousarray(value) for key, value in tensors.items()}
    meta = original.meta
    if rng.random() < chance:
        meta["sha256"] = _digest({k: v for k, v in meta.items() if k != "sha256"}, tensors)
    return save_safetensors(tensors, metadata=meta)


MUTATIONS = {function.__name__: function for function in (
    flip_header_length, header_length_beyond_file, flip_header, flip_data, flip_anywhere, truncate, append_bytes,
    tensor_dtype, tensor_shape, tensor_offsets, swap_offsets, swap_names, tensor_entry,
    format_version, metadata_keys, layers_json, layer_field, layer_shape, layer_geometry, activation, graph, arrays,
    scale_of_scales,
)}
HUGE_SHAPES = ("tensor_shape", "layer_shape")


def attempt(path: Path, kind: str) -> tuple[str, str]:
    """("accepted" | "refused" | "failure", detail) for one load of ``path``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an overflow or invalid value while loading is a finding too
            net = IntegerNet.load(path)
    except ValueError as error:
        message = str(error)
        if path.name not in message:
            return "failure", f"ValueError that does not name the file: {message[:500]}"
        if kind == "format_version" and "format version" in message and "export_packed" not in message:
            return "failure", f"a version refusal that does not say how to re-export: {message[:500]}"
        return "refused", message
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001 - anything but ValueError (a Rust panic too) is a finding
        return "failure", f"{type(error).__name__}: {str(error)[:500]}"
    with np.errstate(over="ignore"):
        for name, layer in net.layers.items():
            if not np.isfinite(layer.fp32_scales).all() or not 0 < np.float32(layer.activation.scale) < np.inf:
                return "failure", f"accepted layer {name!r} whose fp32 scales are not finite and positive"
    return "accepted", ""


def limit_address_space(headroom: int) -> None:
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))


def fuzz(files: list[Path], workdir: Path, seed: int, first: int, cases: int) -> dict:
    originals = [Original.read(path) for path in files]
    for path in files:
        IntegerNet.load(path)  # imports and compiles what loading needs before the memory limit
    limit_address_space(ADDRESS_SPACE_HEADROOM)
    warnings.simplefilter("ignore")  # a mutation's casts may overflow; attempt() raises on the loader's warnings
    kinds = list(MUTATIONS)
    counts = {kind: {"accepted": 0, "refused": 0} for kind in kinds}
    failures, examples, traced, heap_peak, slowest, unchanged = [], {}, 0, 0, (0.0, -1), 0
    target = workdir / "mutant.safetensors"
    started = time.perf_counter()
    with open(workdir / "progress", "w") as progress:
        for case in range(first, first + cases):
            rng = np.random.default_rng([seed, case])
            kind = kinds[case % len(kinds)]
            original = originals[rng.integers(len(originals))]
            progress.seek(0)
            progress.write(f"case {case} ({kind})\n")
            progress.truncate()
            progress.flush()  # survives a crash of this process
            blob = MUTATIONS[kind](rng, original)
            target.write_bytes(blob)
            trace = kind in HUGE_SHAPES and traced < TRACED_SAMPLE
            if trace:
                tracemalloc.start()
            start = time.perf_counter()
            outcome, detail = attempt(target, kind)
            elapsed = time.perf_counter() - start
            if trace:
                heap_peak, traced = max(heap_peak, tracemalloc.get_traced_memory()[1]), traced + 1
                tracemalloc.stop()
            slowest = max(slowest, (elapsed, case))
            if blob == original.raw:
                unchanged += 1
                if outcome != "accepted":
                    outcome, detail = "failure", f"the unchanged file was not accepted: {detail}"
            if outcome == "failure":
                failures.append({"case": case, "kind": kind, "detail": detail})
            else:
                counts[kind][outcome] += 1
                examples.setdefault(f"{kind} {outcome}", detail[:300])
    return {"counts": counts, "failures": failures, "examples": examples, "unchanged": unchanged, "traced": traced, "heap_peak": heap_peak,
            "slowest_load_s": slowest[0], "slowest_case": slowest[1], "seconds": time.perf_counter() - started}


def summary(report: dict) -> str:
    rows = [f"{kind:<26}{n['accepted']:>9}{n['refused']:>9}" for kind, n in report["counts"].items()]
    accepted = sum(n["accepted"] for n in report["counts"].values())
    refused = sum(n["refused"] for n in report["counts"].values())
    return "\n".join([f"{'mutation':<26}{'accepted':>9}{'refused':>9}", *rows, f"{'total':<26}{accepted:>9}{refused:>9}",
                      f"failures {len(report['failures'])}, unchanged files {report['unchanged']}, "
                      f"{report['seconds']:.1f} s, slowest load {report['slowest_load_s'] * 1000:.1f} ms, "
                      f"heap peak of {report['traced']} huge-shape loads {report['heap_peak'] / 2**20:.1f} MiB"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mutate packed files and load every mutant; print a JSON report.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--cases", type=int, default=CASES)
    args = parser.parse_args(argv)
    print(json.dumps(fuzz(args.files, args.workdir, args.seed, args.first, args.cases)))


def build_packed_files(directory: Path) -> list[Path]:
    """Real packed files, random seeded weights: a ternary DigitsCNN with fp32 scales, and CifarResNet(8)
    (residual graph, int8 first conv and classifier) with int8 and with fp16 scales."""
    import torch

    from fgq_pipeline.kernels import export_packed
    from fgq_pipeline.models import CifarResNet, DigitsCNN
    from fgq_pipeline.quant import QuantConfig, post_training_quantize, quantize_model

    nets = (
        ("digits_ternary_fp32", lambda: DigitsCNN(channels=(16, 32, 32)), 1, QuantConfig(group_size=4, policy="ternarize_all"), "fp32"),
        ("resnet8_int8_scales", lambda: CifarResNet(depth=8), 3, QuantConfig(group_size=4), "int8"),
        ("resnet8_fp16_scales", lambda: CifarResNet(depth=8), 3, QuantConfig(group_size=8, act_bits=4), "fp16"),
    )
    files = []
    for name, build, channels, config, scale_dtype in nets:
        torch.manual_seed(0)
        model = quantize_model(build(), config)
        post_training_quantize(model, config, [(torch.randn(16, channels, 8, 8), None) for _ in range(2)])
        files.append(export_packed(model, directory / f"{name}.safetensors", scale_dtype=scale_dtype))
        IntegerNet.load(files[-1])
    return files


@pytest.fixture(scope="module")
def packed_files(tmp_path_factory) -> list[Path]:
    return build_packed_files(tmp_path_factory.mktemp("packed"))


@pytest.fixture
def workdir(tmp_path):
    """Where each mutant is written: in memory where there is a tmpfs (a disk write costs ~1 ms here)."""
    if not SHM.is_dir():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=SHM) as directory:
        yield Path(directory)


def test_every_mutation_of_a_packed_file_loads_or_is_refused_with_a_value_error(packed_files, workdir):
    command = [sys.executable, __file__, "--workdir", str(workdir), *map(str, packed_files)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fuzzer hung: {(workdir / 'progress').read_text()}")
    progress = (workdir / "progress").read_text() if (workdir / "progress").exists() else "before the first case"
    assert result.returncode == 0, f"the fuzzer died (rc {result.returncode}) at {progress}: {result.stderr[-3000:]}"
    report = json.loads(result.stdout.splitlines()[-1])
    print(summary(report))  # pytest -s or -rP shows it
    assert not report["failures"], json.dumps(report["failures"][:20], indent=1)
    counts = report["counts"]
    assert all(sum(outcomes.values()) > 0 for outcomes in counts.values())
    refused = sum(outcomes["refused"] for outcomes in counts.values())
    total = sum(sum(outcomes.values()) for outcomes in counts.values())
    assert total == CASES
    assert refused > MIN_REFUSED * total, counts
    assert report["traced"] == TRACED_SAMPLE and report["heap_peak"] < HEAP_LIMIT, report
    assert report["slowest_load_s"] < SLOWEST_LOAD_S, report



def int8_scaled_layer(meta: dict, edit) -> None:
    """Apply ``edit`` to the first layer entry with int8 scales (with a scale-of-scales)."""
    layers = json.loads(meta["layers"])
    edit(next(entry for entry in layers if entry["scale_dtype"] == "int8"))
    meta["layers"] = dumps(layers)


def load_edited(path: Path) -> None:
    """Load as the fuzzer does: the loader's warnings (an fp32 overflow) raised as errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IntegerNet.load(path)


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta.update(format_version="2"),
     "format version '2' is not supported; this reader reads version 3 and does not convert older files: "
     "re-export it from its model with fgq_pipeline.kernels.export_packed"),
    (lambda meta: meta.update(layers=RAW_JSON["@deep@"]), "the header's 'layers' entry is nested too deeply"),
    (lambda meta: meta.update(graph=RAW_JSON["@deep@"]), "the header's 'graph' entry is nested too deeply"),
    (lambda meta: int8_scaled_layer(meta, lambda entry: entry["activation"].update(scale=10**400)),
     "activation scale must be a finite positive number within fp32's normal range"),
    (lambda meta: int8_scaled_layer(meta, lambda entry: entry["activation"].update(scale=1e-45)),
     "activation scale must be a finite positive number within fp32's normal range"),
    (lambda meta: int8_scaled_layer(meta, lambda entry: entry.update(scale_of_scales=0.01)),
     "a layer entry must have exactly the fields"),
], ids=["version", "deep-layers", "deep-graph", "huge-act-scale", "tiny-act-scale", "sos-in-header"])
def test_what_the_fuzzer_found_is_refused_with_a_clear_message(packed_files, tmp_path, edit, message):
    """The fuzzer's findings, each with a digest that matches: before the fixes, a RecursionError, an
    OverflowError, fp32 overflows while loading (or scales of Inf and 0 accepted), a version refusal
    that did not say how to re-export."""
    original = Original.read(packed_files[1])
    meta = original.meta
    edit(meta)
    path = tmp_path / "edited.safetensors"
    path.write_bytes(with_digest(np.random.default_rng(0), {**original.header, "__metadata__": meta}, original.data,
                                 chance=1.0))
    with pytest.raises(ValueError, match=f"edited.safetensors: .*{message}"):
        load_edited(path)


IN_RANGE = "each must be a finite positive number within fp32's normal range"


def set_filter(index: int, value: float):
    def edit(sos: np.ndarray) -> np.ndarray:
        sos = sos.copy()
        sos[index] = value
        return sos

    return edit


@pytest.mark.parametrize("edit, message", [
    (set_filter(0, np.nan), f"the scale-of-scales of filter 0 is nan; {IN_RANGE}"),
    (set_filter(1, np.inf), f"the scale-of-scales of filter 1 is inf; {IN_RANGE}"),
    (set_filter(2, 0.0), f"the scale-of-scales of filter 2 is 0.0; {IN_RANGE}"),
    (set_filter(3, -0.25), f"the scale-of-scales of filter 3 is -0.25; {IN_RANGE}"),
    (set_filter(4, 1e-45), f"the scale-of-scales of filter 4 is 1e-45; {IN_RANGE}"),
    (set_filter(5, 3e38), r"int8 scales of filter 5 times its scale-of-scales 3e\+38 overflow fp32"),
    (lambda sos: sos[:-1], r"scale-of-scales is float32 \(15,\), expected float32 \(16,\)"),
    (lambda sos: sos.reshape(1, -1), r"scale-of-scales is float32 \(1, 16\), expected float32 \(16,\)"),
    (lambda sos: sos.astype(np.float64), r"scale-of-scales is float64 \(16,\), expected float32 \(16,\)"),
    (lambda sos: None, r"int8 scales need a scale-of-scales per output filter \(fp32 \[K\]\), got none"),
], ids=["nan", "inf", "zero", "negative", "subnormal", "overflowing", "short", "2-d", "float64", "missing"])
def test_a_bad_scale_of_scales_array_is_refused_naming_the_value(packed_files, tmp_path, edit, message):
    """A layer's fp32 [K] scale-of-scales (one JSON float per layer before version 3), with a digest that
    matches: the CIFAR ResNet-8 file's first layer with int8 scales, K = 16 filters."""
    original = Original.read(packed_files[1])
    name = next(name for name in sorted(original.tensors) if name.endswith(".scale_of_scales"))
    tensors = dict(original.tensors)
    edited = edit(tensors.pop(name))
    if edited is not None:
        tensors[name] = edited
    path = tmp_path / "edited.safetensors"
    path.write_bytes(save_arrays(np.random.default_rng(0), original, tensors, chance=1.0))
    layer = name.removesuffix(".scale_of_scales")
    with pytest.raises(ValueError, match=f"edited.safetensors: layer '{layer}': {message}"):
        load_edited(path)


if __name__ == "__main__":
    main()
