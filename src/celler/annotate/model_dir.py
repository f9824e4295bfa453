"""The model directory ``celler annotate`` reads: what it holds and which genes the classifier was
trained on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from celler.data.io import read_json
from celler.errors import CellerError
from celler.model.calibration import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)


UNASSIGNED = "Unassigned"
HETEROGENEOUS = "Heterogeneous"
MODEL_FILES = ("model.pt", "labels.json", "vocab.json", "config.json", "token_meta.json")


# ----------------------------------------------------------------------------------------------- model


@dataclass
class TrainedModel:
    """A fine-tuned model directory, loaded: classifier, label maps, vocabulary, tokenisation settings,
    calibration and the genes it was trained on."""

    path: Path
    classifier: object  # celler.model.classifier.CellClassifier
    labels: dict
    vocab: object  # celler.data.vocab.Vocab
    token_meta: dict
    config: dict
    calibration: dict | None
    genes: np.ndarray | None  # token ids the model was trained on (None: unknown, all vocabulary genes)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.levels["subclass"])

    @property
    def max_len(self) -> int:
        return int(self.config.get("finetune", {}).get("max_len", 256))

    def level_calibration(self, level: str) -> dict:
        """``{"temperature", "threshold"}`` of one label level (a flat calibration.json is the subclass's)."""
        cal = self.calibration or {}
        if "temperature" not in cal:
            cal = cal.get(level, {})
        elif level != "subclass":
            cal = {}
        return {"temperature": float(cal.get("temperature", 1.0)),
                "threshold": float(cal.get("threshold", DEFAULT_THRESHOLD)), "calibrated": bool(cal),
                "class_thresholds": dict(cal.get("class_thresholds") or {})}

    def __repr__(self) -> str:
        c = self.classifier.encoder.config
        cal = self.level_calibration("subclass")
        levels = ", ".join(f"{len(v)} {k} types" for k, v in self.classifier.levels.items())
        genes = f"{len(self.genes)} genes" if self.genes is not None else "genes unknown (whole vocabulary)"
        return (f"Celler model {self.path} ({levels}; {genes}; d_model {c.d_model}, {c.n_layers} layers; "
                f"{self.token_meta.get('binning')} binning, {self.token_meta.get('n_bins')} bins; "
                f"temperature {cal['temperature']:.3g}, threshold {cal['threshold']:.3g} "
                f"{'(calibrated)' if cal['calibrated'] else '(default)'}; "
                f"celler {self.config.get('celler_version')})")


def load_model(model_dir, *, device: str = "cpu") -> TrainedModel:
    """Load a fine-tuned model directory (``results/<tissue>/model``) for annotation; clear errors if not."""
    from celler.data.vocab import Vocab
    from celler.model.classifier import load_classifier

    d = Path(model_dir)
    if not d.is_dir():
        msg = f"{d}: model directory not found; pass a fine-tuned model (results/<tissue>/model)"
        raise CellerError(msg)
    for name in MODEL_FILES:
        if not (d / name).exists():
            msg = (f"{d}: missing {name}; is this a complete Celler fine-tuned model directory "
                   "(results/<tissue>/model)?")
            raise CellerError(msg)
    classifier, labels = load_classifier(d, device=device)
    config, meta = read_json(d / "config.json"), read_json(d / "token_meta.json")
    for key, ok in (("n_bins", lambda v: isinstance(v, int) and v > 1),
                    ("binning", lambda v: v in (None, "per_batch", "per_cell"))):
        if not ok(meta.get(key)):
            msg = (f"{d / 'token_meta.json'}: {key} is {meta.get(key)!r}, not a valid setting; the file is "
                   "damaged or from another program: restore it from the fine-tuning run")
            raise CellerError(msg)
    cal_path = d / "calibration.json"
    calibration = read_json(cal_path) if cal_path.exists() else None
    if calibration is None:
        log.warning("%s: no calibration.json; using temperature 1 and threshold %.2f", d, DEFAULT_THRESHOLD)
    vocab = Vocab.load(d / "vocab.json")
    if len(vocab) != classifier.encoder.config.vocab_size:
        msg = (f"{d}: vocab.json has {len(vocab)} tokens but the model's gene embedding "
               f"{classifier.encoder.config.vocab_size} rows; the directory mixes files of different models")
        raise CellerError(msg)
    genes = training_genes(d, config, vocab)
    return TrainedModel(d, classifier, labels, vocab, meta, config, calibration, genes)


def training_genes(model_dir: Path, config: dict, vocab) -> np.ndarray | None:
    """Token ids of the genes the model was trained on.

    From ``genes.json`` (a list of gene tokens) in the model directory; else from the token store named in
    config.json when it is still there; else ``None`` (every vocabulary gene is used, with a warning).
    Restricting the query to these genes matters: a gene the classifier never saw has an untrained (or only
    pretrained) embedding, and the bin edges of a batch are quantiles over exactly these genes.
    """
    path = Path(model_dir) / "genes.json"
    if path.exists():
        tokens = read_json(path, expect=list)
        ids = [vocab.token_to_id[t] for t in tokens if isinstance(t, str) and t in vocab]
        return np.unique(np.asarray(ids, dtype=np.int64))
    recorded = config.get("token_store")
    if recorded:  # a relative path is relative to the workflow directory: the cwd or an ancestor of the model
        recorded = Path(recorded)
        candidates = [recorded] if recorded.is_absolute() else [
            recorded, *(p / recorded for p in Path(model_dir).resolve().parents)]
        store = next((c for c in candidates if (c / "meta.json").exists() and (c / "genes.bin").exists()),
                     None)
        if store is not None:
            from celler.data.tokens import TokenStore

            ids = TokenStore(store).distinct_tokens()
            if len(ids) and ids.max() < len(vocab):
                log.info("%s has no genes.json; training genes taken from its token store %s", model_dir,
                         store)
                return ids
    log.warning("%s: the genes the model was trained on are unknown (no genes.json, token store not found); "
                "every vocabulary gene of the query is used, which hurts predictions when the query has "
                "genes the training data lacked", model_dir)
    return None


# --------------------------------------------------------------------------------------------- result
