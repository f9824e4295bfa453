"""Properties of the long-tail losses (GInf, HDM, balanced softmax, focal), checked against hand formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from celler.train.losses import (
    LOSS_NAMES,
    BalancedSoftmax,
    FocalLoss,
    GaussianCloudedLogits,
    GInf,
    GInfHDM,
    HardDifficultyMining,
    build_loss,
)

COUNTS = [500, 120, 40, 9, 3]  # unequal N_j, head first
C = len(COUNTS)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, C, generator=g) * 2
    targets = torch.randint(0, C, (16,), generator=g)
    return logits, targets


def weighted_nll(logits, targets, counts, tau=1.0):
    """−log p_y with p_j = N_j^τ exp(z_j) / Σ_l N_l^τ exp(z_l), written out without log-sum-exp tricks."""
    n = torch.tensor(counts, dtype=torch.float64) ** tau
    w = n * torch.exp(logits.double())
    return (-torch.log(w[torch.arange(len(targets)), targets] / w.sum(1))).mean()


def test_ginf_equals_ce_when_counts_equal(batch):
    logits, targets = batch
    ce = F.cross_entropy(logits, targets)
    for form in ("paper", "released"):
        no_noise = GInf([50] * C, form=form, sigma=0.0)
        assert torch.allclose(no_noise(logits, targets), ce, atol=1e-6)
        # equal N_j means Δδ = 0 everywhere, so even σ > 0 adds no noise
        noisy = GInf([50] * C, form=form, sigma=2.0, tau=0.5)
        assert torch.allclose(noisy(logits, targets), ce, atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_balanced_softmax_matches_hand_formula(batch, tau):
    logits, targets = batch
    got = BalancedSoftmax(COUNTS, tau=tau)(logits, targets)
    assert torch.allclose(got.double(), weighted_nll(logits, targets, COUNTS, tau), atol=1e-5)
    assert not torch.allclose(got, F.cross_entropy(logits, targets), atol=1e-3)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_paper_form_without_noise_is_balanced_softmax(batch, tau):
    logits, targets = batch
    ginf = GInf(COUNTS, form="paper", sigma=0.0, tau=tau).train()
    assert torch.equal(ginf(logits, targets), BalancedSoftmax(COUNTS, tau=tau)(logits, targets))


def test_released_form_without_noise_is_ce(batch):
    logits, targets = batch
    released = GInf(COUNTS, form="released", sigma=0.0).train()
    assert torch.allclose(released(logits, targets), F.cross_entropy(logits, targets), atol=1e-6)


def test_paper_noise_is_delta_times_epsilon():
    # μ shifts every ε: with σ = 0, z_inf = z + Δδ·μ exactly, Δδ_j = log N_max − log N_j
    z = torch.zeros(2, C)
    ginf = GInf(COUNTS, sigma=0.0, mu=0.7).train()
    delta = torch.log(torch.tensor(500.0)) - torch.log(torch.tensor(COUNTS, dtype=torch.float32))
    assert torch.allclose(ginf.noisy_logits(z), (delta * 0.7).expand(2, C))


@pytest.mark.parametrize("form", ["paper", "released"])
def test_head_class_gets_no_noise(form):
    z = torch.randn(64, C)
    ginf = GInf(COUNTS, form=form, sigma=1.0, generator=torch.Generator().manual_seed(1)).train()
    z_inf = ginf.noisy_logits(z)
    assert ginf.delta[0] == 0
    assert torch.equal(z_inf[:, 0], z[:, 0])  # head: Δδ = 0
    assert (z_inf[:, 1:] != z[:, 1:]).all()  # every other class is perturbed


def test_gcl_cloud_lowers_cosines_within_its_scale():
    cos = torch.zeros(4000, C)
    targets = torch.zeros(4000, dtype=torch.long)
    gcl = GaussianCloudedLogits(COUNTS, cloud=0.5, sigma=3.0, generator=torch.Generator().manual_seed(2)).train()
    drop = cos - gcl.clouded(cos, targets)
    scale = 0.5 * gcl.cloud_scale  # cloud · Δδ_j / max Δδ
    assert (drop >= 0).all()
    assert (drop <= scale + 1e-6).all()
    assert torch.allclose(drop.max(0).values, scale, atol=1e-6)  # σ = 3: |ε| clipped at 1 is reached
    assert drop[:, -1].mean() > drop[:, 1].mean()  # the rarest class gets the widest cloud
    assert (drop[:, 0] == 0).all()  # the head class none


def test_gcl_margin_scale_and_eval_mode(batch):
    cos, targets = batch
    cos = torch.tanh(cos)  # cosines in (−1, 1)
    gcl = GaussianCloudedLogits(COUNTS, scale=30.0, cloud=0.0, margin=0.2).train()
    hand = F.cross_entropy(30.0 * (cos - 0.2 * F.one_hot(targets, C)), targets)  # margin on the target only
    assert torch.allclose(gcl(30.0 * cos, targets), hand, atol=1e-5)
    gcl.eval()  # no cloud, no margin: plain CE on the head's logits
    assert torch.allclose(gcl(30.0 * cos, targets), F.cross_entropy(30.0 * cos, targets), atol=1e-5)
    focal = GaussianCloudedLogits(COUNTS, cloud=0.0, gamma=1.0).eval()
    assert focal(30.0 * cos, targets) < gcl(30.0 * cos, targets)  # focal down-weights easy cells


def test_cosine_head_logits_are_bounded_by_the_scale():
    from celler.model import ClassifierHead, ModelConfig

    head = ClassifierHead(ModelConfig(), 4, cosine_scale=30.0)
    logits, _ = head(torch.randn(64, 64) * 10)
    assert head.out.bias is None
    assert logits.abs().max() <= 30.0 + 1e-4
    assert logits.abs().max() > 1.0  # not squashed to zero


def test_no_noise_in_eval_mode(batch):
    logits, targets = batch
    for form in ("paper", "released"):
        ginf = GInf(COUNTS, form=form, sigma=1.0)
        train_a, train_b = ginf(logits, targets), ginf(logits, targets)
        assert not torch.equal(train_a, train_b)
        ginf.eval()
        eval_a, eval_b = ginf(logits, targets), ginf(logits, targets)
        assert torch.equal(eval_a, eval_b)
        assert torch.equal(ginf.noisy_logits(logits), logits)
    paper = GInf(COUNTS, sigma=1.0, mu=0.5).eval()  # eval ignores μ too: it is balanced softmax
    assert torch.equal(paper(logits, targets), BalancedSoftmax(COUNTS)(logits, targets))


def test_same_seed_same_loss(batch):
    logits, targets = batch

    def run(seed):
        loss = build_loss("ginf+hdm", COUNTS, generator=torch.Generator().manual_seed(seed), sigma=1.0)
        return [loss(logits, targets) for _ in range(3)]

    assert all(torch.equal(a, b) for a, b in zip(run(3), run(3), strict=True))
    assert not torch.equal(run(3)[0], run(4)[0])
    torch.manual_seed(5)  # the global RNG when no generator is given
    a = GInf(COUNTS, sigma=1.0)(logits, targets)
    torch.manual_seed(5)
    assert torch.equal(a, GInf(COUNTS, sigma=1.0)(logits, targets))


def test_hdm_with_all_classes_is_full_weighted_softmax(batch):
    logits, targets = batch
    for n in (C - 1, C, 20):
        hdm = HardDifficultyMining(COUNTS, n=n)(logits, targets)
        assert torch.allclose(hdm.double(), weighted_nll(logits, targets, COUNTS), atol=1e-5)


def test_hdm_small_n_keeps_true_class_and_hardest_wrong_ones():
    logits = torch.tensor([[0.0, 3.0, -1.0, 2.0, 0.5]])
    target = torch.tensor([2])
    counts = [1, 1, 1, 1, 1]  # no prior, so "hardest" is simply the largest logit
    got = HardDifficultyMining(counts, n=2)(logits, target)
    expected = -math.log(math.exp(-1) / (math.exp(-1) + math.exp(3) + math.exp(2)))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() != pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-3)


def test_hdm_ignores_dropped_classes(batch):
    logits, targets = batch
    hdm = HardDifficultyMining(COUNTS, n=1)
    base = hdm(logits, targets)
    adjusted = logits + torch.log(torch.tensor(COUNTS, dtype=torch.float32))
    changed = logits.clone()
    for i, y in enumerate(targets.tolist()):
        wrong = adjusted[i].clone()
        wrong[y] = float("-inf")
        dropped = [j for j in wrong.argsort(descending=True).tolist()[1:] if j != y]
        changed[i, dropped] -= 3.0  # lowering a dropped class keeps it dropped
    assert torch.allclose(hdm(changed, targets), base, atol=1e-6)
    full = BalancedSoftmax(COUNTS)
    assert not torch.allclose(full(changed, targets), full(logits, targets))  # the full softmax does change
    assert not torch.allclose(base, BalancedSoftmax(COUNTS)(logits, targets), atol=1e-4)


def test_ginf_hdm_total_uses_the_same_noisy_logits(batch):
    logits, targets = batch
    # σ = 0: GInf is balanced softmax, HDM the subset softmax on the same adjusted logits
    total = GInfHDM(COUNTS, sigma=0.0, hdm_n=2, hdm_lambda=0.5, hdm_mode="class")(logits, targets)
    hdm = HardDifficultyMining(COUNTS, n=2)(logits, targets)
    expected = BalancedSoftmax(COUNTS)(logits, targets) + 0.5 * hdm
    assert torch.allclose(total, expected, atol=1e-6)
    # with noise and λ = 0 the total is GInf with the same draw
    seeded = {"sigma": 1.0, "generator": torch.Generator().manual_seed(7)}
    only_ginf = GInfHDM(COUNTS, hdm_lambda=0.0, **seeded)(logits, targets)
    seeded["generator"] = torch.Generator().manual_seed(7)
    assert torch.equal(only_ginf, GInf(COUNTS, **seeded)(logits, targets))
    # and with n >= C − 1 HDM repeats the GInf term exactly, noise included: total = 2·GInf
    g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    doubled = GInfHDM(COUNTS, sigma=1.0, hdm_n=C, hdm_mode="class", generator=g1)(logits, targets)
    assert torch.allclose(doubled, 2 * GInf(COUNTS, sigma=1.0, generator=g2)(logits, targets), atol=1e-5)


def test_focal_gamma_zero_is_ce_and_gamma_downweights_easy_cells(batch):
    logits, targets = batch
    ce = F.cross_entropy(logits, targets)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, targets), ce, atol=1e-6)
    p_t = F.softmax(logits, 1)[torch.arange(len(targets)), targets]
    hand = (-(1 - p_t) ** 2 * torch.log(p_t)).mean()
    assert torch.allclose(FocalLoss(gamma=2.0)(logits, targets), hand, atol=1e-6)
    weights = torch.tensor([0.1, 1.0, 2.0, 3.0, 4.0])
    hand_w = (-weights[targets] * torch.log(p_t)).mean()
    assert torch.allclose(FocalLoss(gamma=0.0, alpha=weights.tolist())(logits, targets), hand_w, atol=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradients_flow(name, batch):
    logits, targets = batch
    logits = logits.clone().requires_grad_(True)
    loss = build_loss(name, COUNTS, sigma=0.5) if name.startswith("ginf") else build_loss(name, COUNTS)
    out = loss(logits, targets)
    out.backward()
    assert out.ndim == 0
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_bf16_logits_give_a_float32_loss(batch):
    logits, targets = batch
    out = build_loss("ginf+hdm", COUNTS)(logits.bfloat16(), targets)
    assert out.dtype == torch.float32


def test_build_loss_passes_config_and_rejects_unknowns():
    loss = build_loss("ginf", COUNTS, form="released", mu=0.1, sigma=0.2, tau=0.5)
    assert (loss.form, loss.mu, loss.sigma, loss.tau) == ("released", 0.1, 0.2, 0.5)
    sample = build_loss("ginf+hdm", COUNTS, hdm_mode="sample", hdm_literal=True)
    assert (sample.hdm_mode, sample.hdm_literal) == ("sample", True)
    assert build_loss("gcl", COUNTS, scale=16).scale == 16.0
    both = build_loss("ginf+hdm", COUNTS, hdm_n=3, hdm_lambda=0.25, sigma=None)
    assert (both.hdm_n, both.hdm_lambda, both.sigma) == (3, 0.25, 1 / 3)  # None means the default
    with pytest.raises(ValueError, match="allowed: ce, focal"):
        build_loss("ldam", COUNTS)
    with pytest.raises(ValueError, match="allowed: \\['alpha', 'gamma'\\]"):
        build_loss("focal", COUNTS, sigma=1.0)
    with pytest.raises(ValueError, match="'paper', 'released'"):
        build_loss("ginf", COUNTS, form="gcl")
    with pytest.raises(ValueError, match="hdm_mode"):
        build_loss("ginf+hdm", COUNTS, hdm_mode="cells")
    with pytest.raises(ValueError, match="scale"):
        build_loss("gcl", COUNTS, scale=0)
    with pytest.raises(ValueError, match="sigma"):
        build_loss("ginf", COUNTS, sigma=-1.0)
    with pytest.raises(ValueError, match="hdm_n"):
        build_loss("ginf+hdm", COUNTS, hdm_n=0)
    with pytest.raises(ValueError, match="class_counts"):
        build_loss("ce", [5])
    with pytest.raises(ValueError, match="class_counts"):
        build_loss("balanced_softmax", [5, -1, 3])
    with pytest.raises(ValueError, match="4 classes but `class_counts` has 3"):
        build_loss("balanced_softmax", [5, 2, 1])(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_zero_count_class_counts_as_one(batch):
    logits, targets = batch
    with pytest.warns(UserWarning, match=r"classes \[4\] have no training cells"):
        zero = BalancedSoftmax([500, 120, 40, 9, 0])
    assert torch.equal(zero(logits, targets), BalancedSoftmax([500, 120, 40, 9, 1])(logits, targets))
    with pytest.warns(UserWarning):
        ginf = GInf([500, 120, 40, 9, 0], sigma=1.0).train()
    assert torch.isfinite(ginf(logits, targets))
    assert ginf.delta[-1] == pytest.approx(math.log(500))


def test_hdm_ranking_with_unequal_counts_code_vs_literal():
    from celler.train.hdm import class_mode, hard_classes

    # class 1 has the larger raw logit, class 3 the larger prior-adjusted score (500 vs 9 cells... reversed)
    counts = [9, 3, 500, 120, 40]
    z = torch.tensor([[0.0, 2.0, -5.0, 1.0, -5.0]])
    y = torch.tensor([0])
    log_n = torch.log(torch.tensor(counts, dtype=torch.float32))
    assert hard_classes(z, y, 1).tolist() == [[0, 1]]  # Eq. 8: highest raw logit
    assert hard_classes(z + log_n, y, 1).tolist() == [[0, 3]]  # the code's reading: prior-adjusted score
    code = class_mode(z, z, y, log_n, 1, literal=False)
    literal = class_mode(z, z, y, log_n, 1, literal=True)
    a = z + log_n
    assert code.item() == pytest.approx(-(a[0, 0] - torch.logsumexp(a[0, [0, 3]], 0)).item(), rel=1e-6)
    assert literal.item() == pytest.approx(-(a[0, 0] - torch.logsumexp(a[0, [0, 1]], 0)).item(), rel=1e-6)


def test_literal_eq9_noise_in_numerator_leaves_the_gradient_of_the_noise_free_softmax(batch):
    logits, targets = batch
    z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    noisy = build_loss("ginf+hdm", COUNTS, sigma=1.0, hdm_n=C, hdm_literal=True, hdm_lambda=1.0, hdm_mode="class",
                       generator=torch.Generator().manual_seed(0)).train()
    loss = noisy(z1, targets)
    # HDM literal over all classes = balanced softmax + a constant; GInf term is the noisy paper form
    ginf_only = build_loss("ginf", COUNTS, sigma=1.0, generator=torch.Generator().manual_seed(0)).train()
    (ginf_only(z2, targets) + BalancedSoftmax(COUNTS)(z2, targets)).backward()
    loss.backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6)
    assert not torch.allclose(loss, ginf_only(logits, targets) + BalancedSoftmax(COUNTS)(logits, targets))


def test_hard_samples_are_the_most_confidently_wrong_per_predicted_class():
    from celler.train.hdm import hard_samples

    z = torch.tensor([
        [5.0, 0.0, 0.0],  # predicted 0, true 1: wrong, z_0 = 5
        [3.0, 0.0, 0.0],  # predicted 0, true 2: wrong, z_0 = 3
        [4.0, 0.0, 0.0],  # predicted 0, true 0: right
        [0.0, 2.0, 0.0],  # predicted 1, true 2: wrong
        [0.0, 0.0, 9.0],  # predicted 2, true 2: right
    ])
    y = torch.tensor([1, 2, 0, 2, 2])
    assert hard_samples(z, y, 1).tolist() == [True, False, False, True, False]
    assert hard_samples(z, y, 5).tolist() == [True, True, False, True, False]


def test_sample_mode_adds_the_hard_cells_loss_again(batch):
    from celler.train.hdm import hard_samples

    logits, targets = batch
    loss = build_loss("ginf+hdm", COUNTS, sigma=0.0, hdm_mode="sample", hdm_n=2, hdm_lambda=1.0).train()
    per_cell = F.cross_entropy(logits + torch.log(torch.tensor(COUNTS, dtype=torch.float32)), targets,
                               reduction="none")
    hard = hard_samples(logits, targets, 2)
    assert 0 < hard.sum() < len(targets)
    expected = per_cell.mean() + (per_cell * hard).sum() / len(targets)
    assert torch.allclose(loss(logits, targets), expected, atol=1e-6)
    right = logits.clone()
    right[torch.arange(len(targets)), targets] += 100  # every cell right: no hard sample, GInf alone
    assert torch.allclose(loss(right, targets), BalancedSoftmax(COUNTS)(right, targets), atol=1e-6)


def test_released_form_hdm_term_has_no_prior_either(batch):
    logits, targets = batch
    total = build_loss("ginf+hdm", COUNTS, form="released", sigma=0.0, hdm_n=C,
                       hdm_mode="class").train()(logits, targets)
    assert torch.allclose(total, 2 * F.cross_entropy(logits, targets), atol=1e-5)


def test_prior_lowers_the_push_on_tail_logits_for_a_head_cell():
    z = torch.zeros(1, C, requires_grad=True)
    head = torch.tensor([0])
    F.cross_entropy(z, head).backward()
    ce_grad = z.grad.clone()
    z.grad = None
    BalancedSoftmax(COUNTS)(z, head).backward()
    bs_grad = z.grad.clone()
    assert (ce_grad[0, 1:] > 0).all() and (bs_grad[0, 1:] > 0).all()  # both push tail logits down ...
    assert (bs_grad[0, 1:] < ce_grad[0, 1:]).all()  # ... balanced softmax less so
    assert bs_grad[0, -1] < bs_grad[0, 1]  # the rarer the class, the less


def test_noise_mean_and_spread_monte_carlo():
    z = torch.zeros(20000, C)
    ginf = GInf(COUNTS, mu=0.3, sigma=0.5, generator=torch.Generator().manual_seed(11)).train()
    z_inf = ginf.noisy_logits(z)
    se = ginf.delta * 0.5 / 20000**0.5  # standard error of each mean
    assert ((z_inf.mean(0) - ginf.delta * 0.3).abs() <= 4 * se + 1e-6).all()  # E = z + Δδ·μ
    assert torch.allclose(z_inf.std(0), ginf.delta * 0.5, rtol=0.03)  # sd = Δδ·σ
    assert z_inf.std(0)[0] == 0


def _long_tail_problem(seed):
    """Four Gaussian classes in 8 dimensions, 1000 / 200 / 30 / 8 training cells, a balanced test set."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 8, generator=g) * 1.2
    counts = [1000, 200, 30, 8]

    def draw(n_per_class):
        x = torch.cat([means[c] + torch.randn(n, 8, generator=g) for c, n in enumerate(n_per_class)])
        return x, torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])

    return draw(counts), draw([300] * 4), counts


def _tail_recall(loss, seed):
    (x, y), (xt, yt), _ = _long_tail_problem(seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    loss.train()
    for _ in range(300):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    pred = model(xt).argmax(1)
    return float((pred[yt == 3] == 3).float().mean())


def test_balanced_softmax_and_the_default_loss_raise_tail_recall_over_ce():
    import yaml
    from conftest import ROOT

    section = yaml.safe_load((ROOT / "config.yaml").read_text())["finetune"]
    counts = _long_tail_problem(0)[2]
    for seed in (0, 1):
        ce = _tail_recall(build_loss("ce", counts), seed)
        bs = _tail_recall(build_loss("balanced_softmax", counts), seed)
        default = _tail_recall(build_loss(section["loss"], counts, generator=torch.Generator().manual_seed(seed),
                                          **section.get("loss_params", {})), seed)
        assert bs > ce + 0.1, (seed, ce, bs)
        assert default > ce + 0.1, (seed, ce, default)


def test_gcl_second_stage_batches_are_class_balanced():
    """GCL's second stage retrains on batches that hold each class about equally often, whatever its size."""
    import numpy as np

    from celler.train.rebalance import balanced_batches

    labels = np.repeat([0, 1, 2], [900, 90, 10])  # ratio 90
    rows = balanced_batches(labels, steps=200, batch_size=30, seed=0)
    assert rows.shape == (200, 30)
    share = np.bincount(labels[rows.ravel()], minlength=3) / rows.size
    assert np.allclose(share, 1 / 3, atol=0.02), share  # natural shares would be 0.90 / 0.09 / 0.01
    assert len(np.unique(rows[labels[rows] == 2])) == 10  # every tail cell is drawn, not one repeated


def test_the_package_default_loss_is_the_workflow_default():
    """`build_loss("ginf+hdm", counts)` from Python trains what `config.yaml`'s defaults train."""
    import yaml
    from conftest import ROOT

    section = yaml.safe_load((ROOT / "config.yaml").read_text())["finetune"]
    package = build_loss(section["loss"], COUNTS)
    for key, value in section["loss_params"].items():
        got = getattr(package, key)
        assert got == pytest.approx(value, abs=0.01) if isinstance(value, float) else got == value, (key, got, value)
