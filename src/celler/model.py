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
(:mod:`celler.scgpt`). Attention goes through ``F.scaled_dot_product_attention``, which picks the flash /
memory-efficient kernels on GPUs (flash when a batch has no padding, so pass ``padding_mask=None`` then).

Modules: ``Encoder`` (embeddings + blocks), ``MaskedValueHead`` (pretraining), ``ProfileEncoder`` (a linear
view of the whole expression profile over the encoder's gene vectors) and ``ProfileDecoder`` (the
cell-level pretraining objective), ``ClassifierHead`` (fine-tuning), ``MaskedValueModel`` (what pretraining
trains).
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
    # the public scGPT whole-human architecture (its weights load into this preset, see celler.scgpt)
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


class MaskedValueHead(nn.Module):
    """Predicts the bin of each masked value: classification over the n_bins value bins.

    Classification rather than regression because bins are per-batch quantiles (ranks, not magnitudes):
    cross-entropy models the often multimodal uncertainty about a hidden value without pulling
    predictions to the mean, needs no assumption about bin spacing, and has a known chance level
    (ln(n_bins - 1) ≈ 3.9 for 51 bins), so loss curves compare across datasets.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)
        self.out = nn.Linear(config.d_model, config.n_bins)
        self.apply(_init_weights)

    def forward(self, hidden, targets=None):
        """hidden: (B, L, d). With targets (B, L) (bin at masked positions, -100 elsewhere) the logits are
        computed only at the M masked positions: returns ((M, n_bins), mean cross-entropy). Without
        targets: ((B, L, n_bins), None)."""
        if targets is None:
            return self.out(self.norm(F.gelu(self.fc(hidden)))), None
        keep = targets != -100  # (B, L)
        logits = self.out(self.norm(F.gelu(self.fc(hidden[keep]))))  # (M, n_bins)
        if logits.shape[0] == 0:  # a batch of cells without a single gene: nothing to predict
            return logits, hidden.sum() * 0.0
        return logits, F.cross_entropy(logits.float(), targets[keep])


class ProfileEncoder(nn.Module):
    """A cell's whole expression profile as one vector: the bin-weighted sum of a vector per gene, then
    LayerNorm (``nn.EmbeddingBag`` over the ragged gene lists, no length cap).

    It is a linear map of every expressed gene, the kind of readout that lets a linear classifier use
    all of a cell's genes, next to the transformer's view of its highest-expressed ones (the fine-tuning
    ``readout: cls+profile``). Weights are bin / (n_bins - 1), so the rank within the batch, in (0, 1].
    The gene vectors are the encoder's gene embeddings: tied to them in pretraining (:class:`MaskedValueModel`),
    and the start of a classifier's view from a pretrained encoder, mixed with fresh vectors (:meth:`init_from`).
    """

    FRESH_STD = 0.02  # the fresh gene vectors' init

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_bins = config.n_bins
        self.bag = nn.EmbeddingBag(config.vocab_size, config.d_model, mode="sum")
        self.norm = nn.LayerNorm(config.d_model)
        nn.init.normal_(self.bag.weight, mean=0.0, std=self.FRESH_STD)

    def forward(self, genes, values, offsets):
        """genes, values: (N,) flat over the batch; offsets: (B,) start of each cell -> (B, d_model)."""
        weights = values.float() / (self.n_bins - 1)
        return self.norm(self.bag(genes, offsets, per_sample_weights=weights))

    @torch.no_grad()
    def init_from(self, gene_embedding: torch.Tensor, norm_state: dict | None = None) -> None:
        """Start from pretrained gene vectors (the encoder's gene embedding, ``(vocab, d)``) and, when
        pretraining trained it, the profile's LayerNorm.

        Each gene's vector is its pretrained one, scaled by :meth:`pretrained_scale` to the length of a fresh
        vector, plus the fresh random vector this view was built with: half what pretraining learnt (genes
        expressed together point the same way), half a random projection of every gene (what a fresh start
        reads; from the pretrained vectors alone, fine-tuning on few labels lost the rare classes). Chosen on
        the training cells left unlabelled (10% and 1% of the labels, five benchmarks, seeds 0-2): above the pretrained vectors as they are on 7 of 10 rows,
        level with a fresh start at 10%, above it at 1% (benchmarks/RESULTS.md, "Profile view start")."""
        if gene_embedding.shape != self.bag.weight.shape:
            msg = f"gene embedding {tuple(gene_embedding.shape)} != profile view {tuple(self.bag.weight.shape)}"
            raise CellerError(msg)
        self.bag.weight.add_(gene_embedding * self.pretrained_scale(gene_embedding))
        if norm_state:
            self.norm.load_state_dict(norm_state)

    @classmethod
    def pretrained_scale(cls, gene_embedding: torch.Tensor) -> float:
        """The factor that brings the pretrained vectors to a fresh vector's length: the median length of
        the rows pretraining moved (longer than 1.5x a fresh row's) mapped to a fresh row's; 1 if none did."""
        fresh = cls.FRESH_STD * gene_embedding.shape[1] ** 0.5
        norms = gene_embedding.norm(dim=1)
        moved = norms[norms > 1.5 * fresh]
        return float(fresh / moved.median()) if len(moved) else 1.0


class ProfileDecoder(nn.Module):
    """Scores genes for a cell vector: ``score[b, g] = <query(cell_b), E_g> + bias_g``, with ``E_g`` the gene's
    embedding (the same vectors the profile view sums) and ``bias_g`` a learned per-gene offset (how often
    the gene is expressed at all, so that the cell vector carries what differs between cells).

    The cell-level pretraining objective (:meth:`MaskedValueModel.profile_loss`) is a gene bag model in
    the manner of word2vec's CBOW: a cell vector built from some of its genes must pick out its other
    expressed genes among the genes of the batch, so gene vectors of genes expressed together align, which
    is what the classifier's profile view reads.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.query = nn.Linear(config.d_model, config.d_model)
        self.bias = nn.Embedding(config.vocab_size, 1)
        self.apply(_init_weights)
        nn.init.zeros_(self.bias.weight)

    def forward(self, cells, gene_vectors, genes):
        """cells: (B, d); gene_vectors: (G, d) of the gene ids ``genes`` (G,) -> scores (B, G)."""
        return self.query(cells) @ gene_vectors.T + self.bias(genes).T

    def resize(self, vocab_size: int) -> None:
        """Grow the per-gene offsets with an extended vocabulary (new genes start at 0)."""
        old = self.bias.weight.data
        self.bias = nn.Embedding(vocab_size, 1, device=old.device, dtype=old.dtype)
        nn.init.zeros_(self.bias.weight)
        with torch.no_grad():
            self.bias.weight[: len(old)] = old


class ClassifierHead(nn.Module):
    """An MLP from the cell embedding to class logits (fine-tuning); cross-entropy when given targets.

    ``d_in`` is the embedding's width (d_model, or a multiple when a readout joins several views).
    ``cosine_scale``: a cosine head (GCL, LDAM): logits are scale·cos(hidden, class weight), no bias."""

    def __init__(self, config: ModelConfig, n_classes: int, d_in: int | None = None, *,
                 cosine_scale: float | None = None):
        super().__init__()
        self.fc = nn.Linear(d_in or config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.d_model, n_classes, bias=cosine_scale is None)
        self.cosine_scale = cosine_scale
        self.apply(_init_weights)

    def hidden(self, cell_emb):
        """The features the last layer reads (B, d_model)."""
        return self.drop(self.norm(F.gelu(self.fc(cell_emb))))

    def last(self, hidden):
        """The last layer alone: hidden features -> logits."""
        if self.cosine_scale is None:
            return self.out(hidden)
        return self.cosine_scale * F.linear(F.normalize(hidden, dim=-1), F.normalize(self.out.weight, dim=-1))

    def forward(self, cell_emb, targets=None):
        """cell_emb: (B, d) -> logits (B, n_classes), and the cross-entropy loss if targets (B,) are given."""
        logits = self.last(self.hidden(cell_emb))  # (B, C)
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss


class MaskedValueModel(nn.Module):
    """What pretraining trains: the encoder with its masked-value head and, when ``profile`` is on, the
    cell-level objective: the profile view (its gene vectors tied to the encoder's gene embedding) of a
    cell with some genes hidden predicts every gene of the batch (:class:`ProfileDecoder`)."""

    def __init__(self, config: ModelConfig, *, profile: bool = False):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head = MaskedValueHead(config)
        self.profile = ProfileEncoder(config) if profile else None
        self.decoder = ProfileDecoder(config) if profile else None
        self.tie_profile()

    def tie_profile(self) -> None:
        """Make the profile view read the encoder's gene embedding (again, after a vocabulary resize)."""
        if self.profile is not None:
            self.profile.bag.weight = self.encoder.gene_embedding.weight

    def forward(self, genes, values, padding_mask=None, targets=None, profile=None):
        """(B, L) inputs -> (logits, loss); see MaskedValueHead.forward for the logits' shape. With
        ``profile`` (the :meth:`profile_loss` inputs) -> (logits, loss, profile loss): one forward, for DDP."""
        hidden = self.encoder(genes, values, padding_mask)  # (B, L, d)
        out = self.head(hidden, targets)
        return out if profile is None else (*out, self.profile_loss(*profile))

    def profile_loss(self, genes, values, offsets, hidden):
        """Cross-entropy of a cell's hidden genes among the batch's genes that the cell does not show.

        genes, values, offsets: the batch's whole profiles, flat (collate); hidden: (N,) bool, the genes
        left out of the cell's input vector. Each cell's vector (its visible genes) scores every gene
        expressed anywhere in the batch except its own visible ones; the target is its hidden genes,
        weighted by their values (bin / (n_bins - 1)). Cells with nothing hidden are skipped."""
        cell = _cell_of(offsets, len(genes))
        cells = self.profile(genes, values.masked_fill(hidden, 0), offsets)  # (B, d)
        batch_genes, column = torch.unique(genes, return_inverse=True)  # (G,), (N,)
        scores = self.decoder(cells, self.encoder.gene_embedding(batch_genes), batch_genes).float()  # (B, G)
        seen = ~hidden
        scores = scores.index_put((cell[seen], column[seen]), torch.tensor(float("-inf"), device=scores.device))
        target = torch.zeros_like(scores)
        target = target.index_put((cell[hidden], column[hidden]), values[hidden].float(), accumulate=True)
        mass = target.sum(1)
        keep = mass > 0
        if not keep.any():
            return scores.sum() * 0.0
        logp = torch.log_softmax(scores[keep], 1).masked_fill(target[keep] == 0, 0.0)
        return -((target[keep] * logp).sum(1) / mass[keep]).mean()


def _cell_of(offsets, n: int):
    """The cell (row) of each of the ``n`` flat profile entries, from the cells' start ``offsets``."""
    counts = torch.diff(offsets, append=offsets.new_tensor([n]))
    return torch.repeat_interleave(torch.arange(len(offsets), device=offsets.device), counts)


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


__all__ = [
    "PRESETS", "ClassifierHead", "Encoder", "MaskedValueHead", "MaskedValueModel", "ModelConfig", "ProfileDecoder",
    "ProfileEncoder",
    "configure_optimizers", "describe", "preset",
]
