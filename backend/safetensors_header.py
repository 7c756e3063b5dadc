"""Safetensors files without loading them: headers, single tensors, streamed writes.

A safetensors file is an 8-byte little-endian header length, a JSON header
(name -> dtype, shape, data_offsets relative to the data section) and the raw
data. Reading only the header answers "what is in here and how big" for a
multi-GB shard in microseconds, which is what the MTP doctor and patch rely on.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backend.atomic import replacing

# The reference implementation refuses headers above 100 MB; a larger length
# means the file is not safetensors (or is corrupt), not that it is huge.
MAX_HEADER_BYTES = 100 * 1024 * 1024
COPY_CHUNK_BYTES = 16 * 1024 * 1024

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

# numpy has no bfloat16: BF16 tensors come back as their raw uint16 bits.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "F64": np.dtype("<f8"),
}


class SafetensorsError(ValueError):
    """A file is not a readable safetensors file; the message names the file and why."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    """Offset of the first byte within the data section."""
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_bytes: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        """Absolute file offset of the data section."""
        return 8 + self.header_bytes

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data: what an index's total_size sums per shard."""
        return sum(info.nbytes for info in self.tensors.values())


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header; raises SafetensorsError with a one-line reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{path.name}: {size} bytes, too short for safetensors")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise SafetensorsError(
                    f"{path.name}: not a safetensors file (header length {length} is implausible)"
                )
            if 8 + length > size:
                raise SafetensorsError(
                    f"{path.name}: truncated (header needs {8 + length} bytes, file has {size})"
                )
            raw = handle.read(length)
    except OSError as error:
        raise SafetensorsError(f"{path.name}: cannot read ({error.strerror})") from None
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        message = f"{path.name}: not a safetensors file (header is not JSON)"
        raise SafetensorsError(message) from None
    if not isinstance(parsed, dict):
        raise SafetensorsError(f"{path.name}: not a safetensors file (header is not an object)")
    metadata = parsed.pop("__metadata__", None) or {}
    data_size = size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    for name, entry in parsed.items():
        info = _tensor_info(path, name, entry)
        if info.end > data_size:
            raise SafetensorsError(
                f"{path.name}: truncated ({name} ends at byte {info.end} of the data section, "
                f"which holds {data_size})"
            )
        tensors[name] = info
    return SafetensorsHeader(path, length, tensors, dict(metadata))


def _tensor_info(path: Path, name: str, entry: object) -> TensorInfo:
    try:
        assert isinstance(entry, dict)
        dtype = str(entry["dtype"])
        shape = tuple(int(dim) for dim in entry["shape"])
        start, end = (int(offset) for offset in entry["data_offsets"])
    except (AssertionError, KeyError, TypeError, ValueError):
        raise SafetensorsError(f"{path.name}: malformed header entry for {name}") from None
    if dtype not in DTYPE_SIZES:
        raise SafetensorsError(f"{path.name}: {name} has unknown dtype {dtype}")
    expected = DTYPE_SIZES[dtype] * int(np.prod(shape, dtype=np.int64))
    if end - start != expected or start < 0:
        raise SafetensorsError(
            f"{path.name}: {name} spans {end - start} bytes, "
            f"its {dtype}{list(shape)} needs {expected}"
        )
    return TensorInfo(name, dtype, shape, start, end)


def read_tensor(path: Path, name: str, header: SafetensorsHeader | None = None) -> np.ndarray:
    """One tensor's data by offset (BF16 as uint16 bits); the rest of the file is not read."""
    header = header or read_header(path)
    info = header.tensors.get(name)
    if info is None:
        raise SafetensorsError(f"{Path(path).name}: no tensor named {name}")
    if info.dtype not in NUMPY_DTYPES:
        raise SafetensorsError(f"{Path(path).name}: {name}: dtype {info.dtype} not readable here")
    with Path(path).open("rb") as handle:
        handle.seek(header.data_start + info.start)
        raw = handle.read(info.nbytes)
    if len(raw) != info.nbytes:
        raise SafetensorsError(f"{Path(path).name}: truncated while reading {name}")
    return np.frombuffer(raw, dtype=NUMPY_DTYPES[info.dtype]).reshape(info.shape)


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and return the uint16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class FileSlice:
    """Tensor bytes that stay in another file and are streamed, never held whole."""

    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its dtype, shape and where its bytes come from."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes | FileSlice

    @property
    def nbytes(self) -> int:
        return self.data.length if isinstance(self.data, FileSlice) else len(self.data)

    @classmethod
    def from_array(cls, array: np.ndarray, dtype: str | None = None) -> TensorSpec:
        """`dtype` overrides the name (e.g. "BF16" for uint16 bits)."""
        little = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
        names = {value: key for key, value in NUMPY_DTYPES.items() if key != "BF16"}
        return cls(dtype or names[little.dtype], tuple(array.shape), little.tobytes())

    @classmethod
    def from_file(cls, header: SafetensorsHeader, name: str) -> TensorSpec:
        info = header.tensors[name]
        return cls(
            info.dtype,
            info.shape,
            FileSlice(header.path, header.data_start + info.start, info.nbytes),
        )


def encode_header(tensors: Mapping[str, TensorSpec], metadata: Mapping[str, str] | None) -> bytes:
    """The length prefix plus the JSON header, padded with spaces to 8 bytes as the format does."""
    entries: dict[str, object] = {}
    if metadata:
        entries["__metadata__"] = dict(metadata)
    offset = 0
    for name, spec in tensors.items():
        expected = DTYPE_SIZES[spec.dtype] * int(np.prod(spec.shape, dtype=np.int64))
        if spec.nbytes != expected:
            given = f"{spec.nbytes} bytes given for {spec.dtype}{list(spec.shape)}"
            raise SafetensorsError(f"{name}: {given}")
        entries[name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(
    path: Path, tensors: Mapping[str, TensorSpec], metadata: Mapping[str, str] | None = None
) -> None:
    """Write `path` exactly (no rename) and fsync it; callers choose how it becomes visible."""
    with Path(path).open("wb") as out:
        out.write(encode_header(tensors, metadata))
        for spec in tensors.values():
            if isinstance(spec.data, FileSlice):
                _copy_range(spec.data, out)
            else:
                out.write(spec.data)
        out.flush()
        os.fsync(out.fileno())


def _copy_range(source: FileSlice, out: object) -> None:
    with source.path.open("rb") as handle:
        handle.seek(source.offset)
        left = source.length
        while left > 0:
            chunk = handle.read(min(COPY_CHUNK_BYTES, left))
            if not chunk:
                raise SafetensorsError(f"{source.path.name}: truncated while copying")
            out.write(chunk)  # type: ignore[attr-defined]
            left -= len(chunk)


def write_safetensors_atomic(
    path: Path, tensors: Mapping[str, TensorSpec], metadata: Mapping[str, str] | None = None
) -> None:
    """Temp file beside `path`, fsync, rename, fsync the directory: all or nothing."""
    with replacing(path) as temp:
        write_safetensors(temp, tensors, metadata)


def total_data_bytes(headers: Iterable[SafetensorsHeader]) -> int:
    return sum(header.data_bytes for header in headers)
