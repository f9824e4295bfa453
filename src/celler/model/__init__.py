"""Model: the transformer encoder over a cell's (gene, value bin) tokens, the heads and views that read it, the
classifier that fine-tuning trains, the batches they read, and loading public scGPT weights.

:mod:`~celler.model.encoder` (config, presets, encoder), :mod:`~celler.model.heads` (masked-value head, profile
view and decoder, classifier head), :mod:`~celler.model.classifier` (the fine-tuned classifier, its readouts
and model directory), :mod:`~celler.model.calibration` (temperature and the ``Unassigned`` rule stored with
it), :mod:`~celler.model.batching` (cells to batches), :mod:`~celler.model.scgpt` (scGPT checkpoints).
"""

from celler.model.encoder import PRESETS, Encoder, ModelConfig, configure_optimizers, describe, preset
from celler.model.heads import (
    ClassifierHead,
    MaskedValueHead,
    MaskedValueModel,
    ProfileDecoder,
    ProfileEncoder,
)

__all__ = [
    "PRESETS", "ClassifierHead", "Encoder", "MaskedValueHead", "MaskedValueModel", "ModelConfig", "ProfileDecoder",
    "ProfileEncoder", "configure_optimizers", "describe", "preset",
]
