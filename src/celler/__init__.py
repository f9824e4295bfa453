"""Celler: cell-type annotation with a genomic language model trained for long-tailed labels.

The package is split by stage, each module one idea:

* data stages (no torch): :mod:`celler.data.io`, :mod:`celler.data.qc`, :mod:`celler.data.vocab`,
  :mod:`celler.data.binning`, :mod:`celler.data.tokens`, :mod:`celler.data.splits`
* model and training: :mod:`celler.model`, :mod:`celler.train.pretrain`, :mod:`celler.train.finetune`,
  :mod:`celler.train.losses`
* evaluation and reports: :mod:`celler.evaluate.metrics`, :mod:`celler.evaluate.baselines`, :mod:`celler.plots`
"""

__version__ = "0.1.0"

from celler.errors import CellerError

__all__ = ["CellerError", "__version__"]
