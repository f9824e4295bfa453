"""A pretrained model directory read back: the encoder for fine-tuning and embeddings, the whole
pretraining model for continued pretraining on a tissue, and the vocabulary check (Celler's ``model.pt`` or
scGPT's files).

Written by :mod:`celler.train.checkpoint` in the format ``MODEL_FORMAT_VERSION``."""

from __future__ import annotations

import json
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from celler import __version__
from celler.data.tokens import TokenStore
from celler.data.vocab import Vocab
from celler.errors import CellerError
from celler.model.batching import CellDataset, LengthBucketSampler, collate
from celler.model.encoder import Encoder, ModelConfig
from celler.model.heads import MaskedValueModel

MODEL_FORMAT_VERSION = 1  # bump when model.pt changes incompatibly; load_pretrained refuses other versions


def _read_model(d: Path) -> tuple[dict, ModelConfig, Vocab]:
    """A Celler pretrained model.pt as saved (checked), its ModelConfig and vocabulary."""
    blob = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format_version") != MODEL_FORMAT_VERSION:
        found = blob.get("format_version") if isinstance(blob, dict) else None
        by = blob.get("celler_version") if isinstance(blob, dict) else "unknown"
        msg = (f"{d / 'model.pt'}: model format {found} (written by celler {by}) cannot be read by celler "
               f"{__version__} (format {MODEL_FORMAT_VERSION}); re-run pretraining or install celler {by}")
        raise CellerError(msg)
    try:
        mcfg = ModelConfig(**blob["model_config"])
    except TypeError as e:
        msg = f"{d / 'model.pt'}: model settings not understood by celler {__version__} ({e})"
        raise CellerError(msg) from e
    vocab = Vocab.load(d / "vocab.json")
    if len(vocab) != mcfg.vocab_size:
        msg = f"{d}: vocab.json has {len(vocab)} tokens but the gene embedding has {mcfg.vocab_size} rows"
        raise CellerError(msg)
    return blob, mcfg, vocab


def load_pretrained(model_dir, *, device: str = "cpu") -> tuple[Encoder, ModelConfig, Vocab]:
    """The pretrained encoder, its config and vocabulary from a Celler model directory (``model.pt``) or a
    scGPT one (``args.json``, ``vocab.json``, ``best_model.pt``; see :mod:`celler.model.scgpt`)."""
    d = Path(model_dir)
    if not (d / "model.pt").exists():
        if (d / "best_model.pt").exists() and (d / "args.json").exists():
            from celler.model.scgpt import load_scgpt

            encoder, mcfg, vocab = load_scgpt(d)
            return encoder.to(device), mcfg, vocab
        msg = f"{d}: not a model directory (no model.pt, and no scGPT args.json + best_model.pt)"
        raise CellerError(msg)
    blob, mcfg, vocab = _read_model(d)
    encoder = Encoder(mcfg)
    encoder.load_state_dict(blob["encoder"])
    return encoder.to(device), mcfg, vocab


def load_profile_norm(model_dir) -> dict | None:
    """The profile view's LayerNorm trained by the cell-level objective, or None (not pretrained with it)."""
    d = Path(model_dir)
    if not (d / "model.pt").exists():
        return None
    return _read_model(d)[0].get("profile_norm")


def start_from(model_dir, store, *, profile: bool) -> MaskedValueModel:
    """A pretraining model holding the weights of ``model_dir`` (continued pretraining on a tissue's cells),
    its gene embedding grown to the store's extended vocabulary (new genes start fresh)."""
    d = Path(model_dir)
    if not (d / "model.pt").exists():
        msg = f"{d}: not a Celler pretrained model directory (no model.pt); pretrain first"
        raise CellerError(msg)
    blob, mcfg, model_vocab = _read_model(d)
    if mcfg.n_bins != store.n_bins:
        msg = f"{d}: model has {mcfg.n_bins} value bins but the token store {store.n_bins}; re-tokenize"
        raise CellerError(msg)
    model = MaskedValueModel(mcfg, profile=profile)
    model.encoder.load_state_dict(blob["encoder"])
    model.head.load_state_dict(blob["masked_value_head"])
    if profile and "profile_norm" in blob:
        model.profile.norm.load_state_dict(blob["profile_norm"])
        model.decoder.load_state_dict(blob["profile_decoder"])
    vocab = store.vocab()
    if len(vocab) > len(model_vocab) and vocab.tokens[: len(model_vocab)] == model_vocab.tokens:
        model.encoder.resize_token_embeddings(len(vocab))
        model.config = model.encoder.config
        if model.decoder is not None:
            model.decoder.resize(len(vocab))
        model.tie_profile()
    else:
        check_vocab(vocab, model_vocab, what=f"model {d}")
    return model


@torch.no_grad()
def embed(model_dir, store, *, batch_size: int = 64, max_len: int | None = None, device: str = "auto",
          indices=None) -> np.ndarray:
    """Cell embeddings (the <cls> output, float32, n_cells x d_model, in store order) of ``store``.

    ``store`` is a path or a TokenStore / ConcatStore; ``indices`` picks cells (default all).
    ``max_len`` defaults to the model's pretraining max_len (1200 for scGPT models); longer cells get a
    fixed random subset of genes. (The workflow's ``X_celler`` is the fine-tuned classifier's readout vector,
    ``CellClassifier.embed``, not this.)
    """
    store = TokenStore(store) if isinstance(store, (str, Path)) else store
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    encoder, mcfg, vocab = load_pretrained(model_dir, device=dev)
    check_vocab(store.vocab(), vocab, what=f"model {model_dir}")
    if store.n_bins != mcfg.n_bins:
        msg = f"the token store has {store.n_bins} value bins, model {model_dir} was trained on {mcfg.n_bins}"
        raise CellerError(msg)
    if max_len is None:
        config = Path(model_dir) / "config.json"
        max_len = json.loads(config.read_text())["pretrain"]["max_len"] if config.exists() else 1200
    dataset = CellDataset(store, indices, max_len=max_len, mask_ratio=0.0)
    batches = LengthBucketSampler(dataset.lengths, batch_size, shuffle=False)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=partial(collate, pad_id=mcfg.pad_id))
    encoder.eval()
    out = np.zeros((len(dataset), mcfg.d_model), np.float32)
    position = {int(c): i for i, c in enumerate(dataset.indices)}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    for batch in tqdm(loader, desc="embed", unit="batch", mininterval=5):
        pad = batch["padding_mask"]
        with autocast:
            emb = encoder.cell_embedding(batch["genes"].to(dev), batch["values"].to(dev),
                                         pad.to(dev) if pad.any() else None)
        out[[position[int(c)] for c in batch["index"]]] = emb.float().cpu().numpy()
    return out


def check_vocab(data: Vocab, model: Vocab, *, what: str) -> None:
    """Raise unless token ids of ``data`` mean the same genes as in ``model``."""
    if data.tokens == model.tokens:
        return
    n = min(len(data), len(model))
    if data.tokens[:n] == model.tokens[:n] and len(data) > len(model):
        msg = (f"the token store uses an extended vocabulary ({len(data) - len(model)} genes beyond the "
               f"{len(model)} of {what}); fine-tune with resize_token_embeddings, or tokenize with vocab "
               "mode 'match'")
    else:
        first = next((i for i in range(n) if data.tokens[i] != model.tokens[i]), n)
        msg = (f"the token store's vocabulary differs from that of {what} (id {first}: "
               f"{data.tokens[first] if first < len(data) else None!r} vs "
               f"{model.tokens[first] if first < len(model) else None!r}); tokenize with the model's "
               "vocab.json")
    raise CellerError(msg)


__all__ = ["MODEL_FORMAT_VERSION", "check_vocab", "embed", "load_pretrained", "load_profile_norm", "start_from"]
