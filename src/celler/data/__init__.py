"""Data: a user's ``.h5ad`` files to token stores (no torch).

Reading matrices and atomic writes (:mod:`~celler.data.io`), QC and the train/test split (:mod:`~celler.data.qc`,
:mod:`~celler.data.splits`), genes onto the vocabulary (:mod:`~celler.data.vocab`), per-batch binning and the
token store (:mod:`~celler.data.binning`, :mod:`~celler.data.tokens`, :mod:`~celler.data.prepare`), the sharded
tokenisation of large inputs (:mod:`~celler.data.shards`), label-scarce and long-tailed cell lists
(:mod:`~celler.data.longtail`) and synthetic data for tests and benchmarks (:mod:`~celler.data.synth`).
"""

__all__ = ["binning", "io", "longtail", "prepare", "qc", "shards", "splits", "synth", "tokens", "vocab"]
