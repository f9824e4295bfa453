"""Reading inputs with checks, and writing outputs atomically (no partial files on failure)."""

from __future__ import annotations

import contextlib
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
    if not path.exists():
        msg = f"{path}: file not found; check the path in config.yaml"
        raise CellerError(msg)
    if path.suffix != ".h5ad":
        msg = f"{path}: not an .h5ad file; convert it with anndata (e.g. sc.read_10x_mtx(...).write_h5ad(...))"
        raise CellerError(msg)
    try:
        return ad.read_h5ad(path, backed="r")
    except Exception as e:  # h5py raises several types for a damaged or foreign file
        msg = f"{path}: cannot be read as AnnData ({type(e).__name__}: {e}); is it a valid .h5ad file?"
        raise CellerError(msg) from e


def to_csr(x) -> sp.csr_matrix:
    """Return ``x`` as a float32 CSR matrix with explicit zeros removed."""
    m = sp.csr_matrix(x, dtype=np.float32) if not sp.issparse(x) else x.tocsr().astype(np.float32, copy=False)
    m.eliminate_zeros()
    return m


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``path`` only if the block succeeds.

    Works for files and directories, so a failed stage never leaves a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


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
        if not self.obs.index.is_unique:
            dup = self.obs.index[self.obs.index.duplicated()][0]
            msg = f"{self.path}: duplicate cell name {dup!r}; make names unique (adata.obs_names_make_unique())"
            raise CellerError(msg)

    @property
    def n_cells(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as float32 CSR, checked for NaN / inf / negative values."""
        chunk = self._x[start:stop]
        chunk = to_csr(chunk)
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
