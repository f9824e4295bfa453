"""Reading inputs with checks, and writing outputs atomically (no partial files on failure)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from celler.errors import CellerError

log = logging.getLogger(__name__)


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Open an ``.h5ad`` file backed (read-only, the matrix stays on disk), failing with a one-line message on a missing or unreadable file.

    Values are checked where they are read, chunk by chunk (:meth:`MatrixReader.rows`).
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        msg = f"{path}: a symbolic link that leads nowhere (broken or a loop); point it at the .h5ad file"
        raise CellerError(msg)
    if not path.exists():
        msg = f"{path}: file not found; check the path"
        raise CellerError(msg)
    if path.is_dir():
        msg = f"{path}: is a folder, not an .h5ad file; give the path of the .h5ad file inside it"
        raise CellerError(msg)
    if path.suffix != ".h5ad":
        msg = f"{path}: not an .h5ad file; convert it with anndata (e.g. sc.read_10x_mtx(...).write_h5ad(...))"
        raise CellerError(msg)
    try:
        return ad.read_h5ad(path, backed="r")
    except Exception as e:  # h5py raises several types for a damaged or foreign file
        msg = f"{path}: cannot be read as AnnData ({_first_line(e)}); is it a complete, valid .h5ad file?"
        raise CellerError(msg) from e


def _first_line(e: Exception, limit: int = 160) -> str:
    """``Type: message`` of an exception, first line only (HDF5 messages run over several lines)."""
    text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return text if len(text) <= limit else text[:limit] + "..."


def read_json(path: str | Path, *, expect: type = dict):
    """A JSON file's content, checked to be an ``expect`` (dict or list); one-line errors naming the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = f"{path}: cannot be read as JSON ({_first_line(e)}); damaged: restore or re-create it"
        raise CellerError(msg) from e
    if not isinstance(value, expect):
        msg = (f"{path}: expected a JSON {'object' if expect is dict else 'list'}, found "
               f"{type(value).__name__}; the file is damaged: restore or re-create it")
        raise CellerError(msg)
    return value


def to_csr(x) -> sp.csr_matrix:
    """Return ``x`` as a float32 CSR matrix with explicit zeros removed."""
    m = sp.csr_matrix(x, dtype=np.float32) if not sp.issparse(x) else x.tocsr().astype(np.float32, copy=False)
    m.eliminate_zeros()
    return m


OUTPUT_MARKER = ".celler-output"  # written inside every directory output: "Celler wrote this, may replace it"


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the path itself
        return path.absolute()


def check_replaceable(path: str | Path, *, directory: bool, inputs=(), force: bool = False) -> None:
    """Refuse (one-line :class:`CellerError`) to write output ``path`` over something Celler may not replace.

    The rule: a missing path is fine; a **file output** may replace a regular file (or a link), a
    **directory output** an empty directory or one holding Celler's marker file (``.celler-output``,
    written into every directory output). Anything else, e.g. a folder of the user's files or a file where
    a folder goes, is refused unless ``force``. Never replaced, even with ``force``: an input of the same
    command (``inputs``), a folder holding one, and the current folder or one above it.
    """
    path = Path(path)
    _check_protected(path, inputs)
    if force or not (path.exists() or path.is_symlink()):
        return
    is_dir = path.is_dir() and not path.is_symlink()
    if not directory and not is_dir:
        return  # a file (or a link) replaced by a file
    if directory and is_dir and (not any(path.iterdir()) or (path / OUTPUT_MARKER).exists()):
        return  # an empty folder or one Celler wrote
    have = ("a folder not written by Celler" if directory else "a folder") if is_dir else "a file"
    msg = (f"{path}: already exists and is {have}; refusing to replace it with an output "
           f"{'folder' if directory else 'file'}. Choose another path, or pass --force to replace it")
    raise CellerError(msg)


def _check_protected(path: Path, inputs) -> None:
    """Refuse the current folder, a folder above it, an input and a folder holding an input."""
    if not (path.exists() or path.is_symlink()):
        return
    target = _resolved(path)
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        msg = f"{path}: refusing to replace the current folder or one above it; name a new output folder"
        raise CellerError(msg)
    for i in inputs:
        src = _resolved(Path(i))
        if target == src or target in src.parents:
            msg = (f"{path}: refusing to write the output there: it {'is' if target == src else 'contains'} "
                   f"the input {i}; choose another output path")
            raise CellerError(msg)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, inputs=(), force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``path`` only if the block succeeds.

    Works for files and directories, so a failed stage never leaves a half-written output. A directory
    output gets Celler's marker file; what exists at ``path`` is replaced only as :func:`check_replaceable`
    allows (``inputs``: the command's inputs, never replaced).
    """
    path = Path(path)
    _check_protected(path, inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    except OSError as e:
        msg = (f"{path}: cannot write to the folder {path.parent} ({e.strerror or type(e).__name__}); "
               "check its permissions or choose another output path")
        raise CellerError(msg) from e
    try:
        yield tmp
        if tmp.is_dir():
            (tmp / OUTPUT_MARKER).write_text("written by celler; celler may replace this folder\n")
        check_replaceable(path, directory=tmp.is_dir(), inputs=inputs, force=force)
        _remove(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


#: larger than any count of one gene in one cell (about 1e6 reads is a whole deep cell) or any log value
MAX_VALUE = 1e9


class MatrixReader:
    """Row-chunked access to an ``.h5ad`` expression matrix without loading it whole.

    Reads ``X``, ``raw/X`` or ``layers/NAME`` straight from the HDF5 file, so memory stays bounded by the
    chunk size however many cells the file holds. ``obs`` and ``var`` are loaded (they are small).
    """

    def __init__(self, path: str | Path, matrix: str = "X"):
        self.path = Path(path)
        self._adata = read_h5ad(self.path)
        self.obs = self._adata.obs
        if matrix == "X":
            if "X" not in self._adata.file:
                msg = (f"{self.path}: the file has no expression matrix X; choose one it has with matrix: "
                       "raw or layers/NAME")
                raise CellerError(msg)
            self._x, self.var = self._adata.X, self._adata.var
        elif matrix == "raw":
            if self._adata.raw is None:
                msg = f"{self.path}: matrix 'raw' requested but the file has no .raw; set matrix: X"
                raise CellerError(msg)
            self._x, self.var = self._adata.raw.X, self._adata.raw.var
        elif matrix.startswith("layers/") and matrix[7:] in self._adata.layers:
            self._x, self.var = self._adata.layers[matrix[7:]], self._adata.var
        else:
            msg = f"{self.path}: matrix {matrix!r} not found; set matrix: X, raw or layers/NAME"
            raise CellerError(msg)
        self.shape = tuple(self._x.shape)
        self._check_layout(matrix)

    def _check_layout(self, matrix: str) -> None:
        """One-line errors for a matrix Celler cannot use: its type, no cells or genes, names."""
        kind = np.dtype(self._x.dtype).kind
        if kind not in "iuf":
            what = {"b": "boolean", "c": "complex", "O": "object", "S": "text", "U": "text"}.get(kind, kind)
            msg = (f"{self.path}: matrix {matrix} holds {what} values ({self._x.dtype}); Celler needs "
                   "numbers: raw counts or log-normalised expression")
            raise CellerError(msg)
        if 0 in self.shape:
            what = "cells (obs)" if self.shape[0] == 0 else "genes (var)"
            msg = f"{self.path}: matrix {matrix} has no {what} (shape {self.shape}); nothing to use"
            raise CellerError(msg)
        if not self.obs.index.is_unique:
            dup = self.obs.index[self.obs.index.duplicated()][0]
            msg = f"{self.path}: duplicate cell name {dup!r}; make names unique (adata.obs_names_make_unique())"
            raise CellerError(msg)
        names = self.var.index.astype(str).str.strip()
        if (names == "").any() or self.var.index.isna().any():
            at = int(np.flatnonzero((names == "") | self.var.index.isna())[0])
            msg = f"{self.path}: gene {at} of var has an empty name; give every gene a name (var_names)"
            raise CellerError(msg)

    @property
    def n_cells(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as float32 CSR, checked for NaN / inf / negative values."""
        try:
            chunk = to_csr(self._x[start:stop])
        except OSError as e:  # a damaged compressed chunk, a truncated dataset
            msg = (f"{self.path}: rows {start}-{stop} of the matrix cannot be read ({_first_line(e)}); the "
                   "file is damaged: write or download it again")
            raise CellerError(msg) from e
        if chunk.nnz:
            bad = ~np.isfinite(chunk.data)
            if bad.any():
                msg = (f"{self.path}: expression matrix has NaN/inf values (rows {start}-{stop}); "
                       "clean or impute them before running Celler")
                raise CellerError(msg)
            if (chunk.data < 0).any():
                msg = (f"{self.path}: expression matrix has negative values (min {chunk.data.min():.3g}); "
                       "Celler needs counts or log-normalised values, not scaled data (try matrix: raw)")
                raise CellerError(msg)
            with np.errstate(over="ignore"):
                overflow = not np.isfinite(chunk.sum(axis=1)).all()
            if not overflow and chunk.data.max() > MAX_VALUE:
                msg = (f"{self.path}: values too large (max {chunk.data.max():.3g}, rows {start}-{stop}): no count "
                       f"or log-normalised value exceeds {MAX_VALUE:.0e}; check the matrix (matrix: raw?)")
                raise CellerError(msg)
            if overflow:
                msg = (f"{self.path}: values too large (max {chunk.data.max():.3g}): a cell's total "
                       f"overflows 32-bit floats (rows {start}-{stop}); Celler needs counts or log-normalised"
                       " values")
                raise CellerError(msg)
        return chunk

    def chunks(self, chunk_size: int = 20_000) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(start_row, csr_chunk)`` over the whole matrix."""
        for start in range(0, self.n_cells, chunk_size):
            yield start, self.rows(start, min(start + chunk_size, self.n_cells))

    def close(self) -> None:
        self._adata.file.close()

    def __enter__(self) -> MatrixReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
