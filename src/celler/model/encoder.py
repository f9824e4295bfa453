"""The Celler genomic language model: a transformer encoder over a cell's (gene, value bin) tokens.

A cell is a set of tokens: ``<cls>`` first, then its non-zero genes (order carries no meaning, so there is
no positional encoding). Each token's input vector is ``LayerNorm(gene embedding) + value encoding``, where
the value is the gene's expression bin. The output at ``<cls>`` is the cell embedding.

Value ids (the ``values`` tensor) follow the token store::

    0            no value: the <cls> and <pad> positions (a stored gene never has bin 0)
    1..n_bins-1  expression bins from tokenisation
    n_bins       <mask>: the value is hidden and the MaskedValueHead predicts it

Blocks are pre-norm (``x + attn(LN(x))``, then a final LayerNorm) for our own presets, because pre-norm
trains stably from scratch without careful warm-up; ``norm_first=False`` gives post-norm
(``LN(x + attn(x))``, no final norm), the layout of scGPT / BERT, so scGPT weights load unchanged
(:mod:`celler.model.scgpt`). Attention goes through ``F.scaled_dot_product_attention``, which picks the flash /
memory-efficient kernels on GPUs (flash when a batch has no padding, so pass ``padding_mask=None`` then).

Here: ``ModelConfig`` and its presets, ``Encoder`` (embeddings + blocks). The heads that read it are in
:mod:`celler.model.heads`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from celler.errors import CellerError


@dataclass
class ModelConfig:
    vocab_size: int = 60697  # gene embedding rows = len(vocab) (scGPT whole-human: 60,694 genes + 3 specials)
    n_bins: int = 51  # value bins 0..n_bins-1 as in the token store; id n_bins is <mask>
    d_model: int = 64  # width of every token vector; the cell embedding has this size
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # attention heads; d_model must divide evenly
    d_ff: int = 128  # hidden width of each block's MLP
    dropout: float = 0.0  # after embeddings, in attention and on residual branches; 0 for short CPU runs
    value_encoder: str = "embedding"  # 'embedding': a vector per bin; 'continuous': MLP of bin number (scGPT)
    activation: str = "gelu"  # MLP non-linearity, 'gelu' or 'relu' (scGPT)
    norm_first: bool = True  # pre-norm (True, ours) or post-norm (False, scGPT/BERT layout)
    pad_id: int = 60694  # <pad> gene id: its embedding row is zero and never trained
    cls_id: int = 60695  # <cls> gene id: the token whose output is the cell embedding

    def __post_init__(self):
        if self.d_model % self.n_heads:
            msg = f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"
            raise CellerError(msg)
        if self.value_encoder not in ("embedding", "continuous"):
            msg = f"value_encoder must be 'embedding' or 'continuous', got {self.value_encoder!r}"
            raise CellerError(msg)
        if self.activation not in ("gelu", "relu"):
            msg = f"activation must be 'gelu' or 'relu', got {self.activation!r}"
            raise CellerError(msg)


# Named sizes. vocab_size / n_bins / pad_id / cls_id are set from the token store when a model is built.
PRESETS: dict[str, ModelConfig] = {
    # CPU tests and the demo workflow: ~70k non-embedding parameters (+3.9M in the gene embedding)
    "tiny": ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128, dropout=0.0),
    # a laptop GPU or a long CPU run: ~2.1M non-embedding parameters
    "small": ModelConfig(d_model=256, n_layers=4, n_heads=8, d_ff=512, dropout=0.1),
    # the public scGPT whole-human architecture (its weights load into this preset, see celler.model.scgpt)
    "scgpt-base": ModelConfig(d_model=512, n_layers=12, n_heads=8, d_ff=512, dropout=0.2,
                              value_encoder="continuous", activation="relu", norm_first=False),
}


def preset(name: str, **overrides) -> ModelConfig:
    """The named preset with ``overrides`` applied (unknown keys raise)."""
    if name not in PRESETS:
        msg = f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}"
        raise CellerError(msg)
    unknown = set(overrides) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        known = sorted(ModelConfig.__dataclass_fields__)
        msg = f"unknown model setting(s) {sorted(unknown)}; ModelConfig has {known}"
        raise CellerError(msg)
    return replace(PRESETS[name], **overrides)


class BinValueEncoder(nn.Module):
    """A learned vector per value id (bins, plus 0 for no value and n_bins for <mask>), then LayerNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.n_bins + 1, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, values, no_value):
        return self.norm(self.embedding(values))  # (B, L, d)


class ContinuousValueEncoder(nn.Module):
    """An MLP of the bin number as a float (scGPT's 'continuous' style): <mask> -> -1, <cls>/<pad> -> -2."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.mask_id = config.n_bins
        self.linear1 = nn.Linear(1, config.d_model)
        self.linear2 = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, values, no_value):
        x = values.float().masked_fill(values == self.mask_id, -1.0).masked_fill(no_value, -2.0)
        return self.norm(self.linear2(F.relu(self.linear1(x.unsqueeze(-1)))))  # (B, L, d)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # rows q, k, v: as scGPT's in_proj / Wqkv
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x, attn_mask):
        B, L, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # each (B, L, d)
        hd = d // self.n_heads
        q, k, v = (t.view(B, L, self.n_heads, hd).transpose(1, 2) for t in (q, k, v))  # (B, h, L, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, h, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, d))  # (B, L, d)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_ff)
        self.fc2 = nn.Linear(config.d_ff, config.d_model)
        self.act = nn.GELU() if config.activation == "gelu" else nn.ReLU()
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm_first = config.norm_first
        self.attn = SelfAttention(config)
        self.mlp = MLP(config)
        self.ln1 = nn.LayerNorm(config.d_model)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, attn_mask):
        if self.norm_first:
            x = x + self.drop(self.attn(self.ln1(x), attn_mask))
            return x + self.drop(self.mlp(self.ln2(x)))
        x = self.ln1(x + self.drop(self.attn(x, attn_mask)))
        return self.ln2(x + self.drop(self.mlp(x)))


class Encoder(nn.Module):
    """Gene + value embeddings and a stack of transformer blocks; ``forward`` gives one vector per token."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gene_embedding = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        self.gene_norm = nn.LayerNorm(config.d_model)
        value_encoder = BinValueEncoder if config.value_encoder == "embedding" else ContinuousValueEncoder
        self.value_encoder = value_encoder(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()
        self.apply(_init_weights)

    def forward(self, genes, values, padding_mask=None):
        """genes, values: (B, L) int64 with <cls> at position 0; padding_mask: (B, L) bool, True = <pad>.

        Pass ``padding_mask=None`` for a batch without padding (lets SDPA use the flash kernel).
        Returns the hidden states, (B, L, d_model).
        """
        assert genes.shape == values.shape, f"genes {tuple(genes.shape)} != values {tuple(values.shape)}"
        x = self.gene_norm(self.gene_embedding(genes))  # gene vectors, (B, L, d)
        x = x + self.value_encoder(values, genes == self.config.cls_id)  # + value vectors, (B, L, d)
        x = self.drop(x)
        # key padding mask as SDPA wants it: (B, 1, 1, L), True = may attend; <cls> is never padding,
        # so no query row is fully masked (padded query rows produce values that nothing reads).
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)  # (B, L, d)
        return self.ln_f(x)  # (B, L, d)

    def cell_embedding(self, genes, values, padding_mask=None):
        """The output at <cls> (position 0): (B, d_model)."""
        return self.forward(genes, values, padding_mask)[:, 0]

    def resize_token_embeddings(self, new_vocab_size: int) -> None:
        """Grow the gene embedding for an extended vocabulary: old rows kept, new rows initialised fresh."""
        old = self.gene_embedding
        if new_vocab_size < old.num_embeddings:
            msg = f"cannot shrink the gene embedding from {old.num_embeddings} to {new_vocab_size} rows"
            raise CellerError(msg)
        new = nn.Embedding(new_vocab_size, old.embedding_dim, padding_idx=self.config.pad_id,
                           device=old.weight.device, dtype=old.weight.dtype)
        _init_weights(new)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
        self.gene_embedding = new
        self.config = replace(self.config, vocab_size=new_vocab_size)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count; ``non_embedding`` leaves out the gene embedding (a lookup, no FLOPs)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.gene_embedding.weight.numel() if non_embedding else n

    def estimate_flops_per_token(self, seq_len: int, *, training: bool = True) -> float:
        """Model FLOPs per token for a sequence of ``seq_len`` tokens (PaLM appendix B, as nanoGPT).

        2 FLOPs per parameter per token in the matmuls, plus 4·n_layers·d_model·seq_len for the attention
        scores and the weighted sum; training (forward + backward) is three times the forward.
        """
        c = self.config
        forward = 2 * self.num_params(non_embedding=True) + 4 * c.n_layers * c.d_model * seq_len
        return 3 * forward if training else forward


def configure_optimizers(model: nn.Module, *, lr: float, weight_decay: float,
                         betas: tuple[float, float] = (0.9, 0.95), device_type: str = "cpu",
                         slow: nn.Module | None = None, slow_scale: float = 1.0):
    """AdamW with weight decay on matrices and embeddings (dim >= 2) only, not on biases and norms.

    ``slow``: a submodule (a pretrained encoder) whose parameters learn at ``slow_scale`` x ``lr``, so that
    fine-tuning on a few hundred cells adapts it gently while new heads learn at full speed."""
    params = [p for p in model.parameters() if p.requires_grad]
    slow_ids = {id(p) for p in slow.parameters()} if slow is not None and slow_scale != 1.0 else set()
    groups = []
    for scale, members in ((1.0, [p for p in params if id(p) not in slow_ids]),
                           (slow_scale, [p for p in params if id(p) in slow_ids])):
        if members or not groups:
            groups += [
                {"params": [p for p in members if p.dim() >= 2], "weight_decay": weight_decay, "lr": lr * scale},
                {"params": [p for p in members if p.dim() < 2], "weight_decay": 0.0, "lr": lr * scale},
            ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device_type == "cuda")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def describe(config: ModelConfig) -> str:
    """One line: the size of a model built from ``config``."""
    with torch.device("meta"):  # no memory, and the global RNG is left alone
        n = Encoder(config).num_params(non_embedding=True)
    emb = config.vocab_size * config.d_model
    c = config
    return (f"{c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads, d_ff {c.d_ff}, "
            f"{n / 1e6:.2f}M non-embedding + {emb / 1e6:.2f}M embedding parameters")


__all__ = ["PRESETS", "Encoder", "ModelConfig", "configure_optimizers", "describe", "preset"]
