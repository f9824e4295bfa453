"""What reads the encoder's gene vectors or outputs: the masked-value head and the profile view with its decoder
(pretraining), the classifier head (fine-tuning, over whatever readout the classifier builds: the profile and
program views by default, which never run the transformer), and ``MaskedValueModel``, what pretraining trains.

``ProfileEncoder`` is a linear view of a cell's whole expression profile over the encoder's gene vectors;
``ProfileDecoder`` scores genes for a cell vector (the cell-level pretraining objective).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from celler.errors import CellerError
from celler.model.encoder import Encoder, ModelConfig, _init_weights


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


__all__ = ["ClassifierHead", "MaskedValueHead", "MaskedValueModel", "ProfileDecoder", "ProfileEncoder"]
