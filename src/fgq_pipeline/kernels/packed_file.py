"""A whole packed model in one safetensors file: every layer's arrays (``<layer>.weights``,
``.scales``, ``.bias``, and with int8 scales ``.scale_of_scales``, fp32 [K]), plus JSON metadata in
the header (format version, per-layer geometry and formats, the network graph, a SHA-256 digest).

No pickle is involved. The loader trusts nothing: every layer is re-validated, every array's dtype
and shape is checked against the metadata, and the digest catches a flipped byte that still
decodes to valid codes.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from ..atomic import atomic_path
from .activations import ActivationFormat
from .packed import PackedLayer

FORMAT_NAME = "fgq-packed"
HEADER_LENGTH_BYTES = 8  # safetensors: a little-endian u64 header length, the JSON header, the data
HEADER_ALIGNMENT = 8  # the header is space-padded so the data starts 8-byte aligned
FORMAT_VERSION = 3  # 2: graph of named values (see graph.py), conv dilation; 3: a scale-of-scales per filter
ARRAYS = ("weights", "scales", "bias")  # every layer's; int8 scales add SCALE_OF_SCALES
SCALE_OF_SCALES = "scale_of_scales"
_BRIEF = reprlib.Repr()  # header values in messages: a corrupt file's can be huge
_BRIEF.maxstring = _BRIEF.maxother = 80
LAYER_FIELDS = ("name", "kind", "weight_format", "weight_shape", "stride", "padding", "dilation", "group_size",
                "scale_dtype", "activation")
REEXPORT = "re-export it from its model with fgq_pipeline.kernels.export_packed(model, path)"


@dataclass(frozen=True)
class PackedModel:
    """Packed layers by name, in network order, and the graph that runs them (None: layers only)."""

    layers: dict[str, PackedLayer]
    graph: list[dict] | None = None


def save_packed(path: str | Path, layers: list[PackedLayer], graph: list[dict] | None = None) -> Path:
    """Write ``layers`` (and ``graph``) atomically: a crash never leaves a torn file behind."""
    path = Path(path)
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique, got {names}")
    tensors = {f"{layer.name}.{array}": np.ascontiguousarray(getattr(layer, array)) for layer in layers
               for array in _arrays(layer)}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "layers": json.dumps([_layer_metadata(layer) for layer in layers]),
        "graph": json.dumps(graph),
    }
    metadata["sha256"] = _digest(metadata, tensors)
    with atomic_path(path) as temp:
        Path(temp).write_bytes(_with_sorted_metadata(save(tensors, metadata=metadata)))
    return path


def _with_sorted_metadata(data: bytes) -> bytes:
    """safetensors writes the metadata keys in hash order; sorted, equal models give equal files
    (a DVC output's hash then changes only when the model does)."""
    length = int.from_bytes(data[:HEADER_LENGTH_BYTES], "little")
    header = json.loads(data[HEADER_LENGTH_BYTES:HEADER_LENGTH_BYTES + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    return len(text).to_bytes(HEADER_LENGTH_BYTES, "little") + text + data[HEADER_LENGTH_BYTES + length:]


def load_packed(path: str | Path) -> PackedModel:
    """Read and validate a packed model; a corrupt, truncated or inconsistent file raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"packed model {path} does not exist")
    try:
        with safe_open(path, framework="np") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error type, OSError or ValueError
        raise ValueError(f"packed model {path} could not be read ({error}); it is truncated or corrupt") from error
    try:
        model = _parse(metadata, tensors)
    except ValueError as error:
        raise ValueError(f"packed model {path}: {error}") from None
    return model


def _parse(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> PackedModel:
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"not an {FORMAT_NAME} file (header format {_BRIEF.repr(metadata.get('format'))})")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ValueError(f"format version {_BRIEF.repr(version)} is not supported; this reader reads version "
                         f"{FORMAT_VERSION} and does not convert older files: {REEXPORT}")
    layer_entries = _json(metadata, "layers")
    graph = _json(metadata, "graph")
    if not isinstance(layer_entries, list) or not layer_entries:
        raise ValueError("the header lists no layers")
    if graph is not None and not isinstance(graph, list):
        raise ValueError(f"the graph must be a list of operations, got {type(graph).__name__}")
    layers = {}
    for entry in layer_entries:
        layer = _layer_from(entry, tensors)
        if layer.name in layers:
            raise ValueError(f"layer {layer.name!r} is listed twice")
        layers[layer.name] = layer
    expected = {f"{name}.{array}" for name, layer in layers.items() for array in _arrays(layer)}
    if set(tensors) != expected:
        raise ValueError(f"arrays {sorted(set(tensors) - expected)} are not described by the header")
    if metadata.get("sha256") != _digest({k: v for k, v in metadata.items() if k != "sha256"}, tensors):
        raise ValueError("SHA-256 digest mismatch: the file was modified or corrupted after it was written")
    return PackedModel(layers, graph)


def _layer_from(entry: object, tensors: dict[str, np.ndarray]) -> PackedLayer:
    if not isinstance(entry, dict) or set(entry) != set(LAYER_FIELDS):
        raise ValueError(f"a layer entry must have exactly the fields {LAYER_FIELDS}, got {_BRIEF.repr(entry)}")
    name = entry["name"]
    missing = [f"{name}.{array}" for array in ARRAYS if f"{name}.{array}" not in tensors]
    if missing:
        raise ValueError(f"layer {_BRIEF.repr(name)}: arrays {_BRIEF.repr(missing)} are missing")
    activation = entry["activation"]
    if not isinstance(activation, dict) or set(activation) != {"scale", "bits", "signed"}:
        raise ValueError(f"layer {name!r}: activation must give scale, bits and signed, got {_BRIEF.repr(activation)}")
    try:
        activation = ActivationFormat(**activation)
    except ValueError as error:
        raise ValueError(f"layer {name!r}: {error}") from None
    return PackedLayer(
        name=name, kind=entry["kind"], weight_format=entry["weight_format"],
        weight_shape=_tuple(entry["weight_shape"]), stride=_tuple(entry["stride"]),
        padding=_tuple(entry["padding"]), dilation=_tuple(entry["dilation"]), group_size=entry["group_size"],
        weights=tensors[f"{name}.weights"], scales=tensors[f"{name}.scales"], scale_dtype=entry["scale_dtype"],
        scale_of_scales=tensors.get(f"{name}.{SCALE_OF_SCALES}"), bias=tensors[f"{name}.bias"],
        activation=activation,
    )


def _layer_metadata(layer: PackedLayer) -> dict:
    activation = layer.activation
    return {
        "name": layer.name, "kind": layer.kind, "weight_format": layer.weight_format,
        "weight_shape": list(layer.weight_shape), "stride": _list(layer.stride), "padding": _list(layer.padding),
        "dilation": _list(layer.dilation), "group_size": layer.group_size, "scale_dtype": layer.scale_dtype,
        "activation": {"scale": float(activation.scale), "bits": activation.bits, "signed": activation.signed},
    }


def _arrays(layer: PackedLayer) -> tuple[str, ...]:
    """The layer's array names in the file (a scale-of-scales that is present is validated, not ignored)."""
    return ARRAYS if layer.scale_of_scales is None else (*ARRAYS, SCALE_OF_SCALES)


def _digest(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over the header fields and every array's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _json(metadata: dict[str, str], key: str) -> object:
    if key not in metadata:
        raise ValueError(f"the header has no {key!r} entry")
    try:
        return json.loads(metadata[key])
    except RecursionError:
        raise ValueError(f"the header's {key!r} entry is nested too deeply to be read") from None
    except ValueError as error:  # invalid JSON, or an integer too long to convert
        raise ValueError(f"the header's {key!r} entry is not valid JSON ({error})") from None


def _tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _list(value: tuple | None) -> list | None:
    return None if value is None else list(value)
