"""Load a scGPT model directory (``args.json``, ``vocab.json``, ``best_model.pt``) into a Celler Encoder.

This lets a user start from the public scGPT whole-human weights (33M cells) instead of pretraining.
The architecture is read from ``args.json`` (``embsize``, ``nlayers``, ``nheads``, ``d_hid``, ``dropout``,
``n_bins``) into a ``ModelConfig`` with scGPT's layout: post-norm blocks, ReLU, the 'continuous' value
encoder (an MLP of the bin number; ``<mask>`` = -1, ``<cls>``/``<pad>`` = -2, as scGPT's ``mask_value`` /
``pad_value``). Every key of ``best_model.pt`` is either mapped or dropped by name; an unknown key, a key
of ours left without a tensor, or a shape mismatch raises :class:`CellerError`, so a model is never
silently half random (scGPT's own loader drops mismatches with ``strict=False``).

Mapped (N = layer index; a leading ``module.`` from DDP checkpoints is stripped)::

    scGPT key                                                  -> Celler Encoder key
    encoder.embedding.weight              (ntoken, d)          -> gene_embedding.weight
    encoder.enc_norm.{weight,bias}        (d)                  -> gene_norm.{weight,bias}
    value_encoder.linear1.{weight,bias}   (d, 1), (d)          -> value_encoder.linear1.{weight,bias}
    value_encoder.linear2.{weight,bias}   (d, d), (d)          -> value_encoder.linear2.{weight,bias}
    value_encoder.norm.{weight,bias}      (d)                  -> value_encoder.norm.{weight,bias}
    transformer_encoder.layers.N.self_attn.in_proj_weight / .Wqkv.weight / ._impl.Wqkv.weight
                                          (3d, d)              -> blocks.N.attn.qkv.weight
    transformer_encoder.layers.N.self_attn.in_proj_bias / .Wqkv.bias / ._impl.Wqkv.bias
                                          (3d)                 -> blocks.N.attn.qkv.bias
    transformer_encoder.layers.N.self_attn[._impl].out_proj.{weight,bias}  (d, d), (d) -> blocks.N.attn.proj.*
    transformer_encoder.layers.N.linear1.{weight,bias}   (d_hid, d), (d_hid)  -> blocks.N.mlp.fc1.*
    transformer_encoder.layers.N.linear2.{weight,bias}   (d, d_hid), (d)      -> blocks.N.mlp.fc2.*
    transformer_encoder.layers.N.norm1.{weight,bias}     (d)                  -> blocks.N.ln1.*
    transformer_encoder.layers.N.norm2.{weight,bias}     (d)                  -> blocks.N.ln2.*

(``in_proj_*`` is torch's TransformerEncoderLayer, ``Wqkv`` flash-attn's FlashMHA, ``_impl.Wqkv`` scGPT's
flash-attn compatibility wrapper; all three store q, k, v stacked by rows, as our ``qkv`` does.)

Dropped (heads and options Celler replaces or does not use)::

    decoder.*                     ExprDecoder: masked-value regression head (ours classifies bins, new head)
    mvc_decoder.*                 MVC (gene-expression-from-cell-embedding) head
    cls_decoder.*                 scGPT's cell-type classifier (fine-tuning trains ours)
    flag_encoder.*                generative-training flag embedding
    transformer_encoder.layers.N.self_attn.cross_attn.*   generative-training cross-attention
    batch_encoder.*, dsbn.*, bn.*, grad_reverse_discriminator.*   batch labels / domain BN / adversarial
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from celler.data.vocab import Vocab
from celler.errors import CellerError
from celler.model import PRESETS, Encoder, ModelConfig

_LAYER = r"transformer_encoder\.layers\.(\d+)\."
MAPPED = [  # (pattern on the scGPT key, our key template)
    (r"encoder\.embedding\.weight", "gene_embedding.weight"),
    (r"encoder\.enc_norm\.(weight|bias)", "gene_norm.{0}"),
    (r"value_encoder\.(linear1|linear2|norm)\.(weight|bias)", "value_encoder.{0}.{1}"),
    (_LAYER + r"self_attn\.in_proj_(weight|bias)", "blocks.{0}.attn.qkv.{1}"),
    (_LAYER + r"self_attn\.(?:_impl\.)?Wqkv\.(weight|bias)", "blocks.{0}.attn.qkv.{1}"),
    (_LAYER + r"self_attn\.(?:_impl\.)?out_proj\.(weight|bias)", "blocks.{0}.attn.proj.{1}"),
    (_LAYER + r"linear1\.(weight|bias)", "blocks.{0}.mlp.fc1.{1}"),
    (_LAYER + r"linear2\.(weight|bias)", "blocks.{0}.mlp.fc2.{1}"),
    (_LAYER + r"norm1\.(weight|bias)", "blocks.{0}.ln1.{1}"),
    (_LAYER + r"norm2\.(weight|bias)", "blocks.{0}.ln2.{1}"),
]
DROPPED = [r"decoder\.", r"mvc_decoder\.", r"cls_decoder\.", r"flag_encoder\.",
           _LAYER + r"self_attn\.cross_attn\.",
           r"batch_encoder\.", r"dsbn\.", r"bn\.", r"grad_reverse_discriminator\."]


def scgpt_config(args: dict, vocab: Vocab) -> ModelConfig:
    """Our ModelConfig for a scGPT ``args.json``; raises for options our encoder does not implement."""
    style = args.get("input_emb_style", "continuous")
    if style != "continuous":
        msg = f"scGPT input_emb_style {style!r} is not supported (only 'continuous', as the public models)"
        raise CellerError(msg)
    if args.get("pre_norm", False):
        msg = "scGPT models with pre_norm=true are not supported (their pre-norm layout differs from ours)"
        raise CellerError(msg)
    if (args.get("mask_value", -1), args.get("pad_value", -2)) != (-1, -2):
        msg = (f"scGPT mask_value/pad_value {args.get('mask_value')}/{args.get('pad_value')} differ from the "
               "-1/-2 that Celler's continuous value encoder feeds")
        raise CellerError(msg)
    try:
        return replace(PRESETS["scgpt-base"], vocab_size=len(vocab), n_bins=int(args["n_bins"]),
                       d_model=int(args["embsize"]), n_layers=int(args["nlayers"]),
                       n_heads=int(args["nheads"]),
                       d_ff=int(args["d_hid"]), dropout=float(args.get("dropout", 0.2)),
                       pad_id=vocab.token_to_id[args.get("pad_token", "<pad>")], cls_id=vocab.cls_id)
    except KeyError as e:
        msg = f"scGPT args.json lacks {e}; need embsize, nlayers, nheads, d_hid, n_bins"
        raise CellerError(msg) from e


def map_state_dict(theirs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """scGPT state dict -> (our Encoder state dict, dropped scGPT keys); raises on keys it does not know."""
    ours, dropped, unknown = {}, [], []
    for key, tensor in theirs.items():
        key = key.removeprefix("module.")
        for pattern, template in MAPPED:
            m = re.fullmatch(pattern, key)
            if m:
                target = template.format(*m.groups())
                if target in ours:
                    msg = f"scGPT checkpoint has two tensors for {target} (second: {key})"
                    raise CellerError(msg)
                ours[target] = tensor
                break
        else:
            (dropped if any(re.match(p, key) for p in DROPPED) else unknown).append(key)
    if unknown:
        msg = f"scGPT checkpoint has {len(unknown)} key(s) Celler does not know: {unknown[:5]}"
        raise CellerError(msg)
    return ours, dropped


def load_scgpt(model_dir) -> tuple[Encoder, ModelConfig, Vocab]:
    """Encoder with the weights of the scGPT model in ``model_dir``, its ModelConfig and vocabulary."""
    d = Path(model_dir)
    for name in ("args.json", "vocab.json", "best_model.pt"):
        if not (d / name).exists():
            msg = f"{d}: not a scGPT model directory (no {name}; need args.json, vocab.json, best_model.pt)"
            raise CellerError(msg)
    vocab = Vocab.load(d / "vocab.json")
    config = scgpt_config(json.loads((d / "args.json").read_text()), vocab)
    state = torch.load(d / "best_model.pt", map_location="cpu", weights_only=True)
    mapped, dropped = map_state_dict(state)
    emb = mapped.get("gene_embedding.weight")
    if emb is not None and emb.shape[0] != config.vocab_size:
        msg = (f"{d}: the gene embedding has {emb.shape[0]} rows but vocab.json (with <pad>/<cls>/<eoc>) has "
               f"{config.vocab_size} tokens; the vocabulary does not belong to these weights")
        raise CellerError(msg)
    encoder = Encoder(config)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(mapped))
    if missing:
        msg = (f"{d}: scGPT checkpoint lacks {len(missing)} encoder tensor(s), e.g. {missing[:5]} "
               f"(args.json: {config.n_layers} layers)")
        raise CellerError(msg)
    extra = sorted(set(mapped) - set(expected))
    if extra:
        msg = f"{d}: scGPT checkpoint has tensors beyond args.json's {config.n_layers} layers: {extra[:5]}"
        raise CellerError(msg)
    bad = [f"{k}: {tuple(v.shape)} vs ours {tuple(expected[k].shape)}"
           for k, v in mapped.items() if v.shape != expected[k].shape]
    if bad:
        msg = f"{d}: scGPT tensor shapes differ from args.json's architecture: {bad[:5]}"
        raise CellerError(msg)
    encoder.load_state_dict(mapped, strict=True)
    print(f"loaded scGPT model {d}: {len(mapped)} tensors mapped, {len(dropped)} dropped (heads), "
          f"vocabulary of {len(vocab)}", flush=True)
    return encoder, config, vocab


__all__ = ["DROPPED", "MAPPED", "load_scgpt", "map_state_dict", "scgpt_config"]
