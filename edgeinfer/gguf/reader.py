"""A fast, validating, zero-copy GGUF reader.

The file is memory-mapped once; every tensor is a numpy view of its raw blocks, so opening a file costs
only the header walk (metadata and tensor infos), never a copy of the weights. Every count, length,
offset and type read from the file is checked against the file's size before it is used: a damaged or
forged file raises `GGUFError` with a sentence naming the problem, never a numpy traceback or a huge
allocation. Layout reference: ggml/docs/gguf.md and ggml/src/gguf.cpp (`gguf_init_from_file_impl`).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import GGUFError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
GGML_MAX_DIMS = 4
MAX_ARRAY_DEPTH = 8  # nested arrays deeper than this are refused (no real file comes close)
MAX_KEY_BYTES = 1 << 16

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_SCALAR_DTYPES: dict[GGUFValueType, np.dtype] = {
    t: np.dtype("<" + f) if f != "?" else np.dtype(np.bool_) for t, f in _SCALAR_FORMATS.items()
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")  # magic, version, n_tensors, n_kv


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a GGUF file: its description and a zero-copy view of its raw bytes."""

    name: str
    ggml_type: GGMLQuantizationType
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length (fastest-varying)
    offset: int  # absolute byte offset in the file
    n_bytes: int
    data: np.ndarray = field(repr=False)  # uint8, shape (*reversed(ne[1:]), row_bytes), read-only

    @property
    def shape(self) -> tuple[int, ...]:
        """Numpy order: reversed `ne` (rows..., row length)."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return self.ggml_type.name

    def array(self) -> np.ndarray:
        """The tensor with its element type when it has one (F32, F16, BF16 as uint16, I8..F64),
        otherwise the raw uint8 blocks. Zero-copy."""
        dt = _PLAIN_DTYPES.get(self.ggml_type)
        if dt is None:
            return self.data
        return self.data.reshape(-1).view(dt).reshape(self.shape)


_PLAIN_DTYPES: dict[GGMLQuantizationType, np.dtype] = {
    GGMLQuantizationType.F32: np.dtype("<f4"),
    GGMLQuantizationType.F16: np.dtype("<f2"),
    GGMLQuantizationType.BF16: np.dtype("<u2"),
    GGMLQuantizationType.F64: np.dtype("<f8"),
    GGMLQuantizationType.I8: np.dtype("i1"),
    GGMLQuantizationType.I16: np.dtype("<i2"),
    GGMLQuantizationType.I32: np.dtype("<i4"),
    GGMLQuantizationType.I64: np.dtype("<i8"),
}


class GGUFFile:
    """An open GGUF file.

    `metadata`: key -> value (int, float, bool, str; numeric arrays as read-only numpy arrays, string
    arrays as lists of str, nested arrays as lists). `tensors`: name -> TensorInfo, in file order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise GGUFError(f"{self.path}: no such file.") from None
        except IsADirectoryError:
            raise GGUFError(f"{self.path} is a directory, not a GGUF file.") from None
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open ({e.strerror}).") from None
        try:
            self.file_size = os.fstat(fd).st_size
            if self.file_size < _HEADER.size:
                raise GGUFError(
                    f"{self.path} is {self.file_size} bytes long, too short to be a GGUF file "
                    "(the header alone takes 24 bytes); the file is empty or truncated."
                )
            try:
                self._mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                raise GGUFError(f"{self.path}: cannot memory-map the file ({e}).") from None
        finally:
            os.close(fd)
        self._buf = memoryview(self._mmap)
        self._bytes = np.frombuffer(self._mmap, dtype=np.uint8)
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, GGUFValueType] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    # -- public helpers -------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """`{general.architecture}.{suffix}`, e.g. `arch_get("context_length")`."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path} has no tensor named {name!r}.") from None

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def release_pages(self, names) -> int:
        """Tell the OS that the named tensors' pages will not be read again soon (MADV_DONTNEED on the
        read-only mapping): a model that copied them (weights stacked at load) then holds those bytes
        once, not twice. Reading them later faults them back in from the page cache. Pages a tensor
        shares with a neighbour are kept. Returns the bytes released (0 where the OS has no madvise)."""
        mm = getattr(self, "_mmap", None)
        if not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
            return 0
        page = mmap.PAGESIZE
        total = 0
        for name in names:
            t = self.tensors.get(name)
            if t is None:
                continue
            start = -(-t.offset // page) * page
            end = (t.offset + t.n_bytes) // page * page
            if end > start:
                try:
                    mm.madvise(mmap.MADV_DONTNEED, start, end - start)
                    total += end - start
                except (OSError, ValueError):
                    pass
        return total

    def close(self) -> None:
        """Release the mapping. Views handed out earlier keep it alive until they are dropped."""
        self.tensors = {}
        self._bytes = None
        try:
            self._buf.release()
            self._mmap.close()
        except (BufferError, ValueError):
            pass  # a caller still holds a tensor view; the OS unmaps when it goes away

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.path!r}, version={self.version}, arch={self.architecture!r}, "
            f"n_kv={len(self.metadata)}, n_tensors={len(self.tensors)})"
        )

    # -- parsing --------------------------------------------------------------------------------------

    def _fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}")

    def _need(self, pos: int, n: int, what: str) -> None:
        if n < 0 or pos + n > self.file_size:
            raise self._fail(
                f"{what} needs {n} bytes at offset {pos}, past the end of the file "
                f"({self.file_size} bytes); the file is truncated or corrupt."
            )

    def _parse(self) -> None:
        buf = self._buf
        magic, version, n_tensors, n_kv = _HEADER.unpack_from(buf, 0)
        if magic != GGUF_MAGIC:
            if magic[::-1] == GGUF_MAGIC:
                raise self._fail("byte-swapped magic; big-endian GGUF files are not supported.")
            raise self._fail(f"not a GGUF file (magic bytes {magic!r}, expected b'GGUF').")
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0 and (version >> 16) in SUPPORTED_VERSIONS:
                raise self._fail("big-endian GGUF files are not supported.")
            raise self._fail(
                f"GGUF version {version} is not supported (this reader reads versions 2 and 3)."
            )
        self.version = version
        pos = _HEADER.size
        remaining = self.file_size - pos
        # every key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; every tensor info
        # at least 8 + 4 + 8 + 4 + 8 bytes: counts beyond that are forged, refuse before looping.
        if n_kv > remaining // 13:
            raise self._fail(f"the header claims {n_kv} metadata entries, more than the file can hold.")
        if n_tensors > remaining // 32:
            raise self._fail(f"the header claims {n_tensors} tensors, more than the file can hold.")
        for _ in range(n_kv):
            key, pos = self._read_str(pos, "a metadata key", MAX_KEY_BYTES)
            if key in self.metadata:
                raise self._fail(f"metadata key {key!r} appears twice.")
            self._need(pos, 4, f"the type of metadata key {key!r}")
            vtype = self._value_type(_U32.unpack_from(buf, pos)[0], key)
            pos += 4
            value, pos = self._read_value(pos, vtype, key, 0)
            self.metadata[key] = value
            self.metadata_types[key] = vtype

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (
            not isinstance(alignment, int)
            or isinstance(alignment, bool)
            or alignment <= 0
            or alignment & (alignment - 1)
        ):
            raise self._fail(f"general.alignment = {alignment!r} is not a positive power of two.")
        self.alignment = alignment

        infos = []
        for i in range(n_tensors):
            name, pos = self._read_str(pos, f"the name of tensor #{i}", MAX_KEY_BYTES)
            self._need(pos, 4, f"the dimension count of tensor {name!r}")
            n_dims = _U32.unpack_from(buf, pos)[0]
            pos += 4
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise self._fail(f"tensor {name!r} has {n_dims} dimensions (allowed: 1 to 4).")
            self._need(pos, 8 * n_dims + 12, f"the description of tensor {name!r}")
            ne = struct.unpack_from(f"<{n_dims}Q", buf, pos)
            pos += 8 * n_dims
            raw_type, offset = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            infos.append((name, ne, raw_type, offset))

        data_start = -(-pos // alignment) * alignment
        self.data_offset = data_start
        seen: set[str] = set()
        for name, ne, raw_type, offset in infos:
            if name in seen:
                raise self._fail(f"tensor {name!r} appears twice.")
            seen.add(name)
            self.tensors[name] = self._tensor_info(name, ne, raw_type, offset, data_start)
        self._check_overlaps()

    def _tensor_info(self, name, ne, raw_type, offset, data_start) -> TensorInfo:
        try:
            gtype = GGMLQuantizationType(raw_type)
            block_size, type_size = GGML_QUANT_SIZES[gtype]
        except (ValueError, KeyError):
            raise self._fail(
                f"tensor {name!r} has unknown tensor type {raw_type}; the file may come from a newer "
                "llama.cpp than this edgeinfer knows, or be corrupt."
            ) from None
        if any(d == 0 for d in ne) or any(d > 1 << 40 for d in ne):
            raise self._fail(f"tensor {name!r} has an invalid shape {list(ne)}.")
        if ne[0] % block_size:
            raise self._fail(
                f"tensor {name!r} ({gtype.name}) has rows of {ne[0]} elements, not a multiple of the "
                f"block size {block_size}."
            )
        n_rows = 1
        for d in ne[1:]:
            n_rows *= d
        row_bytes = ne[0] // block_size * type_size
        n_bytes = n_rows * row_bytes
        if offset % self.alignment:
            raise self._fail(
                f"tensor {name!r} starts at data offset {offset}, not a multiple of the alignment "
                f"{self.alignment}."
            )
        start = data_start + offset
        if n_bytes > self.file_size or start + n_bytes > self.file_size:
            raise self._fail(
                f"tensor {name!r} ({gtype.name}, shape {list(ne)}) needs {n_bytes} bytes at offset "
                f"{start}, past the end of the file ({self.file_size} bytes); the file is truncated."
            )
        data = self._bytes[start : start + n_bytes].reshape(*reversed(ne[1:]), row_bytes)
        return TensorInfo(name, gtype, tuple(int(d) for d in ne), start, n_bytes, data)

    def _check_overlaps(self) -> None:
        spans = sorted((t.offset, t.offset + t.n_bytes, t.name) for t in self.tensors.values())
        for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise self._fail(f"tensors {name_a!r} and {name_b!r} overlap in the file.")

    def _value_type(self, raw: int, key: str) -> GGUFValueType:
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self._fail(f"metadata key {key!r} has unknown value type {raw}.") from None

    def _read_str(self, pos: int, what: str, limit: int | None = None) -> tuple[str, int]:
        self._need(pos, 8, f"the length of {what}")
        n = _U64.unpack_from(self._buf, pos)[0]
        pos += 8
        if limit is not None and n > limit:
            raise self._fail(f"{what} claims a length of {n} bytes, which is not plausible.")
        self._need(pos, n, what)
        try:
            s = str(self._buf[pos : pos + n], "utf-8")
        except UnicodeDecodeError:
            raise self._fail(f"{what} is not valid UTF-8.") from None
        return s, pos + n

    def _read_value(self, pos: int, vtype: GGUFValueType, key: str, depth: int) -> tuple[Any, int]:
        buf = self._buf
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is not None:
            size = struct.calcsize("<" + fmt)
            self._need(pos, size, f"the value of {key!r}")
            return struct.unpack_from("<" + fmt, buf, pos)[0], pos + size
        if vtype == GGUFValueType.STRING:
            return self._read_str(pos, f"the value of {key!r}")
        # ARRAY: item type, count, items
        if depth >= MAX_ARRAY_DEPTH:
            raise self._fail(f"metadata key {key!r} nests arrays more than {MAX_ARRAY_DEPTH} deep.")
        self._need(pos, 12, f"the array header of {key!r}")
        itype = self._value_type(_U32.unpack_from(buf, pos)[0], key)
        count = _U64.unpack_from(buf, pos + 4)[0]
        pos += 12
        remaining = self.file_size - pos
        dtype = _SCALAR_DTYPES.get(itype)
        if dtype is not None:
            nbytes = count * dtype.itemsize
            if nbytes > remaining:
                raise self._fail(
                    f"array {key!r} claims {count} items of {dtype.itemsize} bytes, more than the "
                    "rest of the file holds."
                )
            arr = self._bytes[pos : pos + nbytes].view(dtype)
            return arr, pos + nbytes
        min_item = 8 if itype == GGUFValueType.STRING else 12
        if count * min_item > remaining:
            raise self._fail(f"array {key!r} claims {count} items, more than the file can hold.")
        if itype == GGUFValueType.STRING:
            return self._read_str_array(pos, count, key)
        items = []
        for _ in range(count):
            item, pos = self._read_value(pos, itype, key, depth + 1)
            items.append(item)
        return items, pos

    def _read_str_array(self, pos: int, count: int, key: str) -> tuple[list[str], int]:
        # the hot path of opening a file: 262,144 vocabulary pieces for Gemma 3
        buf, end, unpack = self._buf, self.file_size, _U64.unpack_from
        raw = self._mmap
        out = [None] * count
        for i in range(count):
            if pos + 8 > end:
                self._need(pos, 8, f"item {i} of {key!r}")
            n = unpack(buf, pos)[0]
            pos += 8
            stop = pos + n
            if stop > end:
                self._need(pos, n, f"item {i} of {key!r}")
            out[i] = raw[pos:stop]
            pos = stop
        try:
            strings = [b.decode("utf-8") for b in out]
        except UnicodeDecodeError:
            strings = [b.decode("utf-8", errors="replace") for b in out]
        return strings, pos


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)
