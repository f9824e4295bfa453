"""Loading scGPT model directories: exact key names and shapes, strict checks, same forward pass.

The checkpoints here are random tensors under the parameter names and shapes of scGPT's
``TransformerModel`` (read from bowang-lab/scGPT ``scgpt/model/model.py``), small sizes. The reference
forward pass is scGPT's ``_encode`` computation rebuilt from torch modules: embedding -> LayerNorm, plus
the value MLP, through ``torch.nn.TransformerEncoder`` (whose parameter names scGPT's non-flash
checkpoints carry).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from celler.data.tokens import TokenStore
from celler.errors import CellerError
from celler.model.classifier import load_classifier
from celler.model.pretrained import embed, load_pretrained
from celler.model.scgpt import load_scgpt, map_state_dict
from celler.train.finetune import FinetuneConfig, build_encoder, finetune

ROOT = Path(__file__).resolve().parents[1]
D, H, FF, NL, N_BINS = 32, 4, 48, 2, 51
GENES = [f"G{i}" for i in range(20)]
ARGS = {"embsize": D, "nheads": H, "d_hid": FF, "nlayers": NL, "dropout": 0.2, "n_bins": N_BINS,
        "input_emb_style": "continuous", "pad_token": "<pad>", "pad_value": -2, "mask_value": -1,
        "n_layers_cls": 3, "fast_transformer": True}
ATTENTION_NAMES = {  # qkv weight, qkv bias, out_proj prefix
    "torch": ("self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj."),
    "flash": ("self_attn.Wqkv.weight", "self_attn.Wqkv.bias", "self_attn.out_proj."),
    "flash-compat": ("self_attn._impl.Wqkv.weight", "self_attn._impl.Wqkv.bias", "self_attn._impl.out_proj."),
}


def scgpt_state_dict(ntoken: int, attention: str = "torch", n_cls: int = 5, seed: int = 0) -> dict:
    """Random tensors named and shaped as a scGPT TransformerModel (continuous values, do_mvc, n_cls > 1)."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    sd = {"encoder.embedding.weight": t(ntoken, D), "encoder.enc_norm.weight": 1 + t(D),
          "encoder.enc_norm.bias": t(D), "flag_encoder.weight": t(2, D),
          "value_encoder.linear1.weight": t(D, 1), "value_encoder.linear1.bias": t(D),
          "value_encoder.linear2.weight": t(D, D), "value_encoder.linear2.bias": t(D),
          "value_encoder.norm.weight": 1 + t(D), "value_encoder.norm.bias": t(D)}
    qkv_w, qkv_b, out = ATTENTION_NAMES[attention]
    for i in range(NL):
        p = f"transformer_encoder.layers.{i}."
        sd |= {p + qkv_w: t(3 * D, D), p + qkv_b: t(3 * D),
               p + out + "weight": t(D, D), p + out + "bias": t(D),
               p + "linear1.weight": t(FF, D), p + "linear1.bias": t(FF), p + "linear2.weight": t(D, FF),
               p + "linear2.bias": t(D), p + "norm1.weight": 1 + t(D), p + "norm1.bias": t(D),
               p + "norm2.weight": 1 + t(D), p + "norm2.bias": t(D)}
    # heads: ExprDecoder (fc 0/2/4), ClsDecoder (nlayers_cls=3: [Linear, ReLU, LayerNorm] x 2, out_layer),
    # MVCDecoder (inner product)
    sd |= {"decoder.fc.0.weight": t(D, D), "decoder.fc.0.bias": t(D), "decoder.fc.2.weight": t(D, D),
           "decoder.fc.2.bias": t(D), "decoder.fc.4.weight": t(1, D), "decoder.fc.4.bias": t(1)}
    for j in (0, 3):
        sd |= {f"cls_decoder._decoder.{j}.weight": t(D, D), f"cls_decoder._decoder.{j}.bias": t(D),
               f"cls_decoder._decoder.{j + 2}.weight": 1 + t(D), f"cls_decoder._decoder.{j + 2}.bias": t(D)}
    sd |= {"cls_decoder.out_layer.weight": t(n_cls, D), "cls_decoder.out_layer.bias": t(n_cls),
           "mvc_decoder.gene2query.weight": t(D, D), "mvc_decoder.gene2query.bias": t(D),
           "mvc_decoder.W.weight": t(D, D)}
    return sd


def write_scgpt_dir(path: Path, state: dict, vocab: dict, args: dict = ARGS) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "args.json").write_text(json.dumps(args))
    (path / "vocab.json").write_text(json.dumps(vocab))
    torch.save(state, path / "best_model.pt")
    return path


def small_vocab() -> dict:
    return {**{g: i for i, g in enumerate(GENES)}, "<pad>": 20, "<cls>": 21, "<eoc>": 22}


def reference_hidden(state, genes, values_float, pad):
    """scGPT's _encode from torch modules: TransformerEncoder(LN(emb(genes)) + value MLP(values))."""
    emb, enc_norm = nn.Embedding(*state["encoder.embedding.weight"].shape), nn.LayerNorm(D)
    value = nn.Sequential(nn.Linear(1, D), nn.ReLU(), nn.Linear(D, D), nn.LayerNorm(D))
    layers = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, 0.2, batch_first=True), NL,
                                   enable_nested_tensor=False)
    emb.weight.data = state["encoder.embedding.weight"]
    enc_norm.load_state_dict({k: state[f"encoder.enc_norm.{k}"] for k in ("weight", "bias")})
    names = {"0": "linear1", "2": "linear2", "3": "norm"}
    value.load_state_dict({k: state[f"value_encoder.{names[k[0]]}.{k[2:]}"] for k in value.state_dict()})
    prefix = "transformer_encoder."
    theirs = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    assert set(theirs) == set(layers.state_dict())  # our scGPT key names are torch's own
    layers.load_state_dict(theirs)
    for m in (emb, enc_norm, value, layers):
        m.eval()
    with torch.no_grad():
        x = enc_norm(emb(genes)) + value(values_float.unsqueeze(-1))
        return layers(x, src_key_padding_mask=pad)


def batch():
    genes = torch.tensor([[21, 3, 7, 1, 12, 20, 20], [21, 5, 0, 19, 2, 8, 11]])
    values = torch.tensor([[0, 4, N_BINS, 50, 1, 0, 0], [0, 2, 2, 9, N_BINS, 30, 7]])  # N_BINS = <mask>
    pad = genes == 20
    as_float = values.float().masked_fill(values == N_BINS, -1.0).masked_fill((genes == 21) | pad, -2.0)
    return genes, values, pad, as_float


@pytest.mark.parametrize("attention", list(ATTENTION_NAMES))
def test_scgpt_weights_load_exactly_and_forward_matches(tmp_path, attention):
    state = scgpt_state_dict(23, attention)
    d = write_scgpt_dir(tmp_path / "scgpt", state, small_vocab())
    encoder, cfg, vocab = load_scgpt(d)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.n_bins) == (D, NL, H, FF, N_BINS)
    assert (cfg.value_encoder, cfg.norm_first, cfg.activation) == ("continuous", False, "relu")
    assert (cfg.pad_id, cfg.cls_id, len(vocab)) == (20, 21, 23)
    ours = encoder.state_dict()
    qkv_w, qkv_b, out = ATTENTION_NAMES[attention]
    for i in range(NL):
        p = f"transformer_encoder.layers.{i}."
        assert torch.equal(ours[f"blocks.{i}.attn.qkv.weight"], state[p + qkv_w])
        assert torch.equal(ours[f"blocks.{i}.attn.qkv.bias"], state[p + qkv_b])
        assert torch.equal(ours[f"blocks.{i}.attn.proj.weight"], state[p + out + "weight"])
        assert torch.equal(ours[f"blocks.{i}.mlp.fc2.weight"], state[p + "linear2.weight"])
        assert torch.equal(ours[f"blocks.{i}.ln2.bias"], state[p + "norm2.bias"])
    assert torch.equal(ours["gene_embedding.weight"], state["encoder.embedding.weight"])
    assert torch.equal(ours["value_encoder.linear1.weight"], state["value_encoder.linear1.weight"])

    genes, values, pad, as_float = batch()
    hidden = encoder.eval()(genes, values, pad)
    torch_names = scgpt_state_dict(23, "torch")  # same seed, same numbers, torch's names
    expected = reference_hidden(torch_names, genes, as_float, pad)
    torch.testing.assert_close(hidden[~pad], expected[~pad], atol=1e-5, rtol=1e-4)


def test_mapping_lists_what_is_dropped():
    state = {"module." + k: v for k, v in scgpt_state_dict(23, "flash").items()}  # saved from DDP
    mapped, dropped = map_state_dict(state)
    assert len(mapped) == 3 + 6 + NL * 12
    assert {k.split(".")[0] for k in dropped} == {"decoder", "cls_decoder", "mvc_decoder", "flag_encoder"}
    extra = {"transformer_encoder.layers.0.self_attn.cross_attn.in_proj_weight": torch.zeros(3 * D, D)}
    assert len(map_state_dict({**state, **extra})[1]) == len(dropped) + 1  # generative cross-attention


@pytest.mark.parametrize(("change", "match"), [
    ("args:d_hid=64", "shapes differ"),
    ("args:nlayers=3", "lacks"),
    ("args:nlayers=1", "beyond"),
    ("args:pre_norm=true", "pre_norm"),
    ("args:input_emb_style=category", "input_emb_style"),
    ("key:foo.bar", "does not know"),
    ("key:duplicate", "two tensors"),
    ("vocab:extra", "rows"),
    ("file:best_model.pt", "not a scGPT model directory"),
])
def test_bad_scgpt_directories_fail_clearly(tmp_path, change, match):
    state, vocab, args = scgpt_state_dict(23), small_vocab(), dict(ARGS)
    kind, what = change.split(":")
    if kind == "args":
        key, value = what.split("=")
        args[key] = json.loads(value) if value[0].isdigit() or value in ("true", "false") else value
    elif what == "duplicate":
        layer = "transformer_encoder.layers.0.self_attn."
        state[layer + "Wqkv.weight"] = state[layer + "in_proj_weight"]
    elif kind == "key":
        state[what] = torch.zeros(1)
    elif kind == "vocab":
        vocab["G_new"] = 23
    d = write_scgpt_dir(tmp_path / "m", state, vocab, args)
    if kind == "file":
        (d / what).unlink()
    with pytest.raises(CellerError, match=match):
        load_scgpt(d)


def test_scgpt_directory_embeds_a_token_store(tmp_path, pbmc3k_tokens):
    """With the whole-human vocabulary, a scGPT directory works wherever a Celler model directory does."""
    vocab = json.loads((ROOT / "resources" / "vocab.json").read_text())
    d = write_scgpt_dir(tmp_path / "scgpt", scgpt_state_dict(len(vocab)), vocab)
    encoder, cfg, _ = load_pretrained(d)
    assert cfg.vocab_size == len(vocab) == 60697
    emb = embed(d, pbmc3k_tokens, indices=np.arange(12), max_len=100)
    assert emb.shape == (12, D)
    assert np.isfinite(emb).all()


def test_finetune_starts_from_a_scgpt_directory(tmp_path, pancreas_tokens):
    """``finetune.init: DIR`` end to end: the encoder fine-tuning starts from holds the scGPT directory's
    tensors exactly, and the fine-tuned model is those weights moved by training, not a fresh init."""
    vocab = json.loads((ROOT / "resources" / "vocab.json").read_text())
    state = scgpt_state_dict(len(vocab))
    d = write_scgpt_dir(tmp_path / "scgpt", state, vocab)
    pairs = {"gene_embedding.weight": "encoder.embedding.weight",
             "value_encoder.linear1.weight": "value_encoder.linear1.weight",
             "blocks.0.attn.qkv.weight": "transformer_encoder.layers.0.self_attn.in_proj_weight",
             "blocks.1.mlp.fc2.weight": "transformer_encoder.layers.1.linear2.weight"}
    cfg = FinetuneConfig(init="pretrained", epochs=1, min_steps=0, batch_size=32, max_len=64, lr=1e-3, seed=0,
                         device="cpu", readout="cls")  # the encoder's own weights must train
    start = build_encoder(cfg, TokenStore(pancreas_tokens), d).state_dict()
    for ours, theirs in pairs.items():
        assert torch.equal(start[ours], state[theirs]), ours

    finetune(pancreas_tokens, tmp_path / "model", cfg, pretrained=d)
    model, labels = load_classifier(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["pretrained"] == str(d)
    assert (model.encoder.config.d_model, model.encoder.config.value_encoder) == (D, "continuous")
    assert set(labels["levels"]["subclass"]) >= {"alpha", "beta"}
    tuned = model.encoder.state_dict()
    for ours, theirs in pairs.items():
        moved = (tuned[ours] - state[theirs]).abs()
        # trained (some weights moved), but a few Adam steps of 1e-3 from the scGPT values (std 0.2), not a
        # fresh initialisation
        assert moved.max() < 0.1, (ours, float(moved.max()))
    assert not torch.equal(tuned["blocks.0.attn.qkv.weight"], state[pairs["blocks.0.attn.qkv.weight"]])
