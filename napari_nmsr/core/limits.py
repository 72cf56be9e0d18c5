"""How much memory a file may ask for, checked from its headers before anything is decompressed.

Every file napari-nmsr reads back as NumPy data (sequences and masks as
NPY/NPZ, result NPZ files) and every weights file (a zip written by
``torch.save``) is checked here first. An NPY header states the array's shape
and dtype, and a zip's directory states every member's size, so a damaged
or hostile file (a 100 KB "zip bomb" that expands to gigabytes) is refused
after reading a few hundred bytes, with a message that says how big it is and
how to get past the limit when the file is genuine.

The budget is ``NMSR_MEMORY_BUDGET_GB`` (environment variable, gigabytes) or,
by default, half the computer's memory, at most 8 GiB. Separately, a zip
member that expands more than :data:`MAX_COMPRESSION_RATIO` times and to more
than :data:`RATIO_CHECK_BYTES` is refused: napari-nmsr writes its files
uncompressed, and real images do not compress that much.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import NMSRError

__all__ = [
    "BUDGET_ENV",
    "MAX_COMPRESSION_RATIO",
    "RATIO_CHECK_BYTES",
    "memory_budget_bytes",
    "human_bytes",
    "npy_header",
    "check_npy_file",
    "check_npz_file",
    "check_zip_file",
    "check_work_memory",
]

BUDGET_ENV = "NMSR_MEMORY_BUDGET_GB"
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_BYTES = 64 * 2**20
_DEFAULT_CAP = 8 * 2**30


def memory_budget_bytes() -> int:
    """Bytes one file may expand to in memory (``NMSR_MEMORY_BUDGET_GB`` or half the RAM, <= 8 GiB)."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise NMSRError(f"{BUDGET_ENV}={text!r} is not a positive number of gigabytes")
        return int(value * 2**30)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 2 * _DEFAULT_CAP
    return int(min(_DEFAULT_CAP, total // 2))


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1024)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def npy_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an open NPY stream positioned at its start; ValueError if it is no NPY."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:  # pragma: no cover - read_magic only returns known versions
        raise ValueError(f"unknown NPY version {version}")
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _declared_bytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=object)) * max(dtype.itemsize, 1)


def _too_big(name: str, what: str, nbytes: int, on_disk: int, budget: int) -> str:
    return (f"'{name}' would need {human_bytes(nbytes)} of memory to read as {what} (the file is "
            f"{human_bytes(on_disk)}), more than the limit of {human_bytes(budget)}. If the file is genuine, "
            f"raise the limit with the environment variable {BUDGET_ENV} (gigabytes) on a computer with enough "
            "memory, or crop or subsample the data first.")


def check_npy_file(path, error: type[NMSRError], what: str = "an array") -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an ``.npy`` file, refused with ``error`` when over budget or not NPY."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            shape, dtype = npy_header(fh)
            offset = fh.tell()
    except OSError as exc:
        raise error(f"'{path.name}' cannot be opened ({exc.strerror or exc}).") from exc
    except ValueError as exc:
        raise error(f"'{path.name}' is not a NumPy .npy file (it is damaged, or another format renamed); expected "
                    f"{what} saved with numpy.save.") from exc
    nbytes = _declared_bytes(shape, dtype)
    budget = memory_budget_bytes()
    if nbytes > budget:
        raise error(_too_big(path.name, what, nbytes, path.stat().st_size, budget))
    if not dtype.hasobject and path.stat().st_size < offset + nbytes:
        raise error(f"'{path.name}' is truncated: its header declares {nbytes} bytes of data but the file "
                    f"holds {path.stat().st_size - offset} (an interrupted copy?).")
    return shape, dtype


def check_npz_file(path, error: type[NMSRError], what: str = "arrays", keys=None) -> dict[str, tuple]:
    """{key: (shape, dtype)} of an ``.npz`` from its zip directory and NPY headers only.

    ``keys``: the members that will be read (default all); their declared
    sizes together must fit the budget. Raises ``error`` for a file that is no
    zip, a member that is no NPY, or a size or compression ratio over the limits.
    """
    path = Path(path)
    budget = memory_budget_bytes()
    on_disk = path.stat().st_size if path.is_file() else 0
    headers: dict[str, tuple] = {}
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            wanted = list(infos) if keys is None else [k for k in keys if k in infos]
            total = 0
            for key in wanted:
                info = infos[key]
                with z.open(info) as fh:
                    shape, dtype = npy_header(fh)
                nbytes = max(_declared_bytes(shape, dtype), int(info.file_size))
                ratio = nbytes / max(int(info.compress_size), 1)
                if nbytes > RATIO_CHECK_BYTES and ratio > MAX_COMPRESSION_RATIO:
                    raise error(f"'{path.name}': the array '{key}' expands {ratio:.0f} times, from "
                                f"{human_bytes(info.compress_size)} to {human_bytes(nbytes)}; a damaged or hostile "
                                f"file (a 'zip bomb'). If it is genuine, save it uncompressed with numpy.savez.")
                total += nbytes
                headers[key] = (shape, dtype)
            if total > budget:
                raise error(_too_big(path.name, what, total, on_disk, budget))
    except NMSRError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, NotImplementedError) as exc:
        raise error(f"'{path.name}' is not a readable NPZ file: it is damaged or incomplete, or another format "
                    f"renamed ({type(exc).__name__}: {exc}).") from exc
    return headers


def check_zip_file(path, error: type[NMSRError], what: str = "a zip archive") -> int:
    """Total declared size of a zip (e.g. a ``torch.save`` file), refused when over the limits."""
    path = Path(path)
    budget = memory_budget_bytes()
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise error(f"'{path.name}' cannot be read as {what}: it is damaged or incomplete, or another format "
                    f"renamed ({type(exc).__name__}: {exc}).") from exc
    total = 0
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_CHECK_BYTES and ratio > MAX_COMPRESSION_RATIO:
            raise error(f"'{path.name}': the member '{info.filename}' expands {ratio:.0f} times, to "
                        f"{human_bytes(info.file_size)}; a damaged or hostile file (a 'zip bomb').")
        total += info.file_size
    if total > budget:
        raise error(_too_big(path.name, what, total, path.stat().st_size, budget))
    return total


def check_work_memory(nbytes: int, what: str, error: type[NMSRError]) -> None:
    """Refuse work estimated to need ``nbytes`` of memory when that is over the budget."""
    budget = memory_budget_bytes()
    if nbytes > budget:
        raise error(f"{what} would need about {human_bytes(nbytes)} of memory, more than the limit of "
                    f"{human_bytes(budget)}. Raise the limit with the environment variable {BUDGET_ENV} "
                    "(gigabytes) on a computer with enough memory, or analyse a cropped or shorter sequence.")
