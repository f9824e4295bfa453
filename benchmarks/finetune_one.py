"""One fine-tuning run at a label fraction: validation and test macro-F1 on one line (for sweeps of defaults).

    python benchmarks/finetune_one.py pbmc_facs 0.1 0 results/accuracy/pretrain/pbmc_facs/seed0 '{"min_steps": 250}'
    python benchmarks/finetune_one.py pbmc_facs 0.1 0 scratch '{"min_steps": 250}'

Arguments: tissue, share of the training labels, seed, a pretrained model directory or ``scratch``, and
``finetune:`` overrides as JSON. The split and the labelled cells are those of ``benchmarks/accuracy.py`` for the
seed. Choose defaults on ``val=`` (the validation cells model selection holds out of the labelled cells) or,
below 100% of the labels, on ``tune=`` (the training cells whose labels the run did not get: a tuning split
that is never reported); ``test=`` is printed for the record only. ``CELLER_CONFIGFILE`` names another whole
config than config.yaml (the many-class benchmark's, written by ``benchmarks/many_classes.py``).
"""

import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from accuracy import REPO, split_cells

from celler.data.longtail import label_fraction
from celler.data.tokens import TokenStore
from celler.evaluate.metrics import evaluate
from celler.model.classifier import predictions_table
from celler.stages import finetune_config
from celler.train.finetune import finetune


def main() -> None:
    torch.set_num_threads(1)
    tissue, fraction, seed, start = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    overrides = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    config = yaml.safe_load(Path(os.environ.get("CELLER_CONFIGFILE", REPO / "config.yaml")).read_text())
    store_path = REPO / f"results/{tissue}/tokens"
    store = TokenStore(store_path)
    cells = store.cells
    train, test = split_cells(cells, config["tissues"][tissue].get("split", {}), seed)
    labelled = label_fraction(cells.loc[train, "label"].astype(str), fraction, seed)
    cfg, _ = finetune_config(dict(config["finetune"]) | overrides)
    cfg = replace(cfg, seed=seed, init="scratch" if start == "scratch" else "pretrained")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, _, info = finetune(store_path, Path(tmp) / "m", cfg, pretrained=None if start == "scratch" else start,
                                  train_cells=labelled, unlabelled_cells=pd.Index(train).difference(labelled))
    counts = cells.loc[labelled, "label"].astype(str).value_counts()

    def macro_f1(names) -> float:
        pred, _ = predictions_table(model, store, np.flatnonzero(cells.index.isin(names)), cfg)
        return evaluate(pred, counts, level="subclass")["macro_f1"]

    unlabelled = pd.Index(train).difference(labelled)  # the tuning split below 100% of the labels
    tune = f"{macro_f1(unlabelled):.3f}" if len(unlabelled) else "-"
    print(f"RESULT {tissue} f={fraction:g} seed={seed} start={start} overrides={json.dumps(overrides)} "
          f"n_labelled={len(labelled)} val={info['val_macro_f1']:.3f} tune={tune} test={macro_f1(test):.3f} "
          f"s={time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    main()
