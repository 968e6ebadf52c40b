"""`.safetensors` files read straight into tensors on the target device: one copy, in parallel, never unpickled.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte range) and the raw
bytes. On the CPU each tensor is read with `preadv` straight into its own allocation; on CUDA the bytes go through
a few pinned staging buffers (one pair per reading thread) and are copied to the device asynchronously while the
next window is read. Every tensor gets its own allocation, so a module that later replaces some of its weights
(channels-last, fused projections) frees the old ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_HEADER = 256 << 20
WINDOW = 16 << 20  # one pinned staging window; two per reading thread


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie in its file."""

    name: str
    dtype: str  # the format's name: F16, BF16, F32, ...
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


# The format's dtype names -> torch's.
DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
          "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
          "F8_E5M2": "float8_e5m2"}  # fmt: skip


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"unsupported tensor dtype {name}")
    return getattr(torch, DTYPES[name])


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors of a .safetensors file (name -> TensorInfo, in file order) and its metadata."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < size <= MAX_HEADER:
            raise ValueError(f"{path} is not a .safetensors file (bad header length)")
        raw = f.read(size)
        length = os.fstat(f.fileno()).st_size
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{path} is not a .safetensors file (unreadable header)") from exc
    metadata = header.pop("__metadata__", None) or {}
    base, infos = 8 + size, []
    for name, entry in header.items():
        begin, stop = entry["data_offsets"]
        if not 0 <= begin <= stop or base + stop > length:
            raise ValueError(f"{path} is truncated or damaged (tensor {name} lies outside the file)")
        infos.append(TensorInfo(name, entry["dtype"], tuple(entry["shape"]), base + begin, base + stop))
    infos.sort(key=lambda t: t.start)
    return {t.name: t for t in infos}, metadata


def load_file(path: str | Path, device: Any = "cpu", dtype: Any = None, **kw) -> dict[str, Any]:
    """Tensors of a .safetensors file on `device`; floating tensors cast to `dtype` (None: as stored)."""
    return load_files([path], device, dtype, **kw)[0]


def load_files(
    paths: list[str | Path],
    device: Any = "cpu",
    dtype: Any = None,
    names: Iterable[str] | None = None,
    threads: int | None = None,
    window: int | None = None,
) -> list[dict[str, Any]]:
    """Several files read at once, their bytes shared out between the threads (one dict per file).

    On CUDA the bytes pass through pinned staging windows of `window` bytes; on the CPU they are read straight
    into each tensor, or through (unpinned) windows when `window` is given.
    """
    import torch

    wanted = set(names) if names is not None else None
    headers = [read_header(p)[0] for p in paths]
    infos = [(i, t) for i, h in enumerate(headers) for t in h.values() if wanted is None or t.name in wanted]
    device = torch.device(device)
    raw = {(i, t.name): torch.empty(t.nbytes, dtype=torch.uint8, device=device) for i, t in infos}
    fds = [os.open(str(p), os.O_RDONLY) for p in paths]
    try:
        groups = _split(infos, threads or default_threads())
        if device.type == "cuda":
            streams = [torch.cuda.Stream(device) for _ in groups]
            _run(list(range(len(groups))), lambda i: _read_staged(fds, groups[i], raw, window or WINDOW, streams[i]))
            if hasattr(torch._C, "_host_emptyCache"):
                torch._C._host_emptyCache()  # give the pinned staging windows back
        elif window:
            _run(groups, lambda group: _read_staged(fds, group, raw, window))
        else:
            _run(groups, lambda group: _read_host(fds, group, raw))
    finally:
        for fd in fds:
            os.close(fd)
    out: list[dict[str, Any]] = [{} for _ in paths]
    for i, t in infos:
        out[i][t.name] = _typed(raw.pop((i, t.name)), t, dtype)
    return out


def default_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def _typed(buf, info: TensorInfo, dtype):
    tensor = buf.view(torch_dtype(info.dtype)).view(info.shape)
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor


def _split(infos: list[tuple[int, TensorInfo]], n: int) -> list[list[tuple[int, TensorInfo]]]:
    """Consecutive runs of (file, tensor) of about equal bytes, one per thread."""
    total = sum(t.nbytes for _, t in infos)
    groups: list[list[tuple[int, TensorInfo]]] = [[]]
    share, acc = total / max(1, n), 0
    for item in infos:
        if acc >= share * len(groups) and len(groups) < n:
            groups.append([])
        groups[-1].append(item)
        acc += item[1].nbytes
    return [g for g in groups if g]


def _run(groups: list, work) -> None:
    if len(groups) <= 1:
        for group in groups:
            work(group)
        return
    with ThreadPoolExecutor(len(groups)) as pool:
        for future in [pool.submit(work, g) for g in groups]:
            future.result()


def _pread(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise OSError(f"unexpected end of file at byte {offset}")
        view, offset = view[got:], offset + got


def _read_host(fds: list[int], group: list[tuple[int, TensorInfo]], raw: dict) -> None:
    for i, t in group:
        _pread(fds[i], memoryview(raw[i, t.name].numpy()), t.start)


def _windows(group: list[tuple[int, TensorInfo]], size: int):
    """(file, offset, length, [(key, offset in tensor, offset in window, length)]): a group's bytes in windows."""
    pieces: list[tuple[tuple[int, str], int, int, int]] = []
    file = start = pos = 0
    for i, t in group:
        done = 0
        while done < t.nbytes:
            if pieces and (i != file or t.start + done != pos or pos - start >= size):
                yield file, start, pos - start, pieces
                pieces = []
            if not pieces:
                file, start, pos = i, t.start + done, t.start + done
            n = min(t.nbytes - done, size - (pos - start))
            pieces.append(((i, t.name), done, pos - start, n))
            done, pos = done + n, pos + n
    if pieces:
        yield file, start, pos - start, pieces


def _read_staged(fds: list[int], group: list, raw: dict, window: int, stream=None) -> None:
    """Through two staging windows (pinned, for a CUDA stream): one is read while the other is copied out."""
    import torch

    cuda = stream is not None
    stages = [torch.empty(window, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
    done: list[Any] = [None, None]
    with torch.cuda.stream(stream) if cuda else nullcontext():
        for k, (file, offset, length, pieces) in enumerate(_windows(group, window)):
            slot = k % 2
            if done[slot] is not None:
                done[slot].synchronize()  # the copies out of this window have finished
            _pread(fds[file], memoryview(stages[slot].numpy())[:length], offset)
            dsts = [raw[key][at : at + n] for key, at, _, n in pieces]
            _copy_all(dsts, [stages[slot][pos : pos + n] for _, _, pos, n in pieces], cuda)
            if cuda:
                done[slot] = torch.cuda.Event()
                done[slot].record(stream)
    if cuda:
        stream.synchronize()


def _copy_all(dsts: list, srcs: list, non_blocking: bool) -> None:
    """All of a window's copies in one call: the reading thread takes the GIL once, not once per tensor (it
    competes with the imports running meanwhile)."""
    import torch

    global _FOREACH
    if _FOREACH and hasattr(torch, "_foreach_copy_"):
        try:
            torch._foreach_copy_(dsts, srcs, non_blocking=non_blocking)
            return
        except (RuntimeError, TypeError):  # a build that refuses lists across devices: copy one by one (idempotent)
            _FOREACH = False
    for dst, src in zip(dsts, srcs, strict=True):
        dst.copy_(src, non_blocking=non_blocking)


_FOREACH = True


def save_file(tensors: dict[str, Any], path: str | Path, metadata: dict | None = None, fill=None) -> Path:
    """Write tensors to a .safetensors file one at a time (no second copy of the whole set in memory).

    `fill(name, tensor)`, if given, makes each tensor's values just before it is written: the dict may then hold
    meta tensors that give only names, shapes and dtypes.
    """
    import torch

    names = {getattr(torch, v): k for k, v in DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    tmp = Path(f"{path}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for name, t in tensors.items():
            t = (fill(name, t) if fill else t).detach().to("cpu").contiguous().view(-1)
            if t.numel():
                f.write(memoryview(t.view(torch.uint8).numpy()))
    tmp.replace(path)
    return Path(path)


def map_file(path: str | Path) -> dict[str, Any]:
    """CPU tensors viewing a private (copy-on-write) memory map of the file: no read until a tensor is touched."""
    import mmap
    import warnings

    import torch

    infos, _ = read_header(path)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frombuffer warns about buffers it cannot resize
        for t in infos.values():
            dtype = torch_dtype(t.dtype)
            if not t.nbytes:
                out[t.name] = torch.empty(t.shape, dtype=dtype)
                continue
            buf = torch.frombuffer(mapped, dtype=torch.uint8, count=t.nbytes, offset=t.start)
            if t.start % dtype.itemsize:
                buf = buf.clone()  # a misaligned tensor (unusual writers) gets its own aligned copy
            out[t.name] = buf.view(dtype).view(t.shape)
    return out
