"""build_loss: values against references computed here in numpy; ignore pixels; weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoparticle.errors import InputError
from cryoparticle.models.losses import LOSSES, build_loss

IGNORE = 255


def make_batch(seed: int = 0, n_classes: int = 2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, n_classes, 5, 7, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, n_classes, (2, 5, 7), generator=g)
    target[0, 0, :4] = IGNORE
    target[1, 3:, 5:] = IGNORE
    return logits, target


def np_log_softmax(logits: np.ndarray) -> np.ndarray:  # (N, C, H, W) → same
    m = logits.max(axis=1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))


def pixels(logits, target):
    """(P, C) log-probabilities and (P,) labels of the non-ignored pixels, in numpy."""
    logp = np_log_softmax(logits.numpy())
    logp = np.moveaxis(logp, 1, -1).reshape(-1, logits.shape[1])
    t = target.numpy().reshape(-1)
    keep = t != IGNORE
    return logp[keep], t[keep]


def ref_ce(logits, target, eps=0.0, weights=None):
    logp, t = pixels(logits, target)
    c = logp.shape[1]
    w = np.ones(c) if weights is None else np.asarray(weights, float)
    per_pixel = (1 - eps) * w[t] * -logp[np.arange(len(t)), t] + eps / c * (w * -logp).sum(1)
    return per_pixel.sum() / w[t].sum()


def ref_dice(logits, target, smooth=1.0):
    logp, t = pixels(logits, target)
    p = np.exp(logp[:, 1])
    g = (t == 1).astype(float)
    return 1 - (2 * (p * g).sum() + smooth) / (p.sum() + g.sum() + smooth)


def ref_focal(logits, target, gamma, alpha=None):
    logp, t = pixels(logits, target)
    a = np.ones(logp.shape[1]) if alpha is None else np.asarray(alpha, float)
    lp = logp[np.arange(len(t)), t]
    return np.mean(-a[t] * (1 - np.exp(lp)) ** gamma * lp)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, [0.3, 2.0]])
def test_cross_entropy_matches_reference(eps, weights):
    logits, target = make_batch()
    loss = build_loss("ce", label_smoothing=eps, class_weights=weights)(logits, target)
    assert loss.item() == pytest.approx(ref_ce(logits, target, eps, weights), rel=1e-10)


def test_cross_entropy_three_classes_and_plain_definition():
    logits, target = make_batch(3, n_classes=3)
    loss = build_loss("ce", class_weights=[1.0, 0.5, 4.0])(logits, target)
    assert loss.item() == pytest.approx(ref_ce(logits, target, 0.0, [1.0, 0.5, 4.0]), rel=1e-10)
    logp, t = pixels(logits, target)
    plain = build_loss("ce")(logits, target).item()
    assert plain == pytest.approx(-logp[np.arange(len(t)), t].mean(), rel=1e-10)


def test_dice_matches_reference():
    logits, target = make_batch(1)
    loss = build_loss("dice")(logits, target)
    assert loss.item() == pytest.approx(ref_dice(logits, target), rel=1e-10)
    # a perfect, confident prediction has a Dice loss near 0; the opposite near 1
    valid = target != IGNORE
    sure = torch.stack([(target != 1) * 40.0, (target == 1) * 40.0], 1).double()
    assert build_loss("dice")(sure, target).item() < 1e-6
    # all wrong: 1 − s / (Σp + Σt + s) with Σp + Σt = number of valid pixels, s = 1
    expected = 1 - 1.0 / (valid.sum().item() + 1)
    assert build_loss("dice")(-sure, target).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, [0.25, 0.75]])
def test_focal_matches_reference(gamma, alpha):
    logits, target = make_batch(2)
    loss = build_loss("focal", focal_gamma=gamma, class_weights=alpha)(logits, target)
    assert loss.item() == pytest.approx(ref_focal(logits, target, gamma, alpha), rel=1e-10)


def test_focal_without_focusing_is_cross_entropy_and_down_weights_easy_pixels():
    logits, target = make_batch(4)
    ce = build_loss("ce")(logits, target)
    assert build_loss("focal", focal_gamma=0.0)(logits, target).item() == pytest.approx(ce.item())
    assert build_loss("focal", focal_gamma=2.0)(logits, target).item() < ce.item()


def test_ce_dice_is_the_weighted_sum():
    logits, target = make_batch(5)
    combined = build_loss("ce_dice", label_smoothing=0.1, dice_weight=0.5)(logits, target)
    expected = ref_ce(logits, target, 0.1) + 0.5 * ref_dice(logits, target)
    assert combined.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_change_nothing_and_get_no_gradient(name):
    logits, target = make_batch(6)
    ignored = target == IGNORE
    kwargs = {"class_weights": [0.5, 2.0]} if name in ("ce", "focal") else {}
    loss_fn = build_loss(name, label_smoothing=0.05, **kwargs)
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, target)
    loss.backward()
    grad = x.grad.movedim(1, -1)
    assert torch.all(grad[ignored] == 0)
    assert grad[~ignored].abs().sum() > 0
    scrambled = logits.clone()
    scrambled.movedim(1, -1)[ignored] = torch.randn(int(ignored.sum()), 2,
                                                     dtype=torch.float64) * 100
    assert loss_fn(scrambled, target).item() == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignore_batch_gives_zero(name):
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE, dtype=torch.long)
    loss = build_loss(name, label_smoothing=0.1, class_weights=[1.0, 3.0])(logits, target)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad == 0)


def test_class_weights_change_the_loss_as_expected():
    # every particle pixel is badly predicted, every background pixel well: weighting the
    # particle class up raises the mean loss, weighting it down lowers it
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0] = 3.0  # always "background"
    ce = build_loss("ce")(logits, target).item()
    up = build_loss("ce", class_weights=[1.0, 5.0])(logits, target).item()
    down = build_loss("ce", class_weights=[1.0, 0.2])(logits, target).item()
    assert down < ce < up
    # uniform weights are no weights
    same = build_loss("ce", class_weights=[2.0, 2.0])(logits, target).item()
    assert same == pytest.approx(ce)


def test_bad_arguments():
    with pytest.raises(InputError, match="ce_dice"):
        build_loss("lovasz")
    with pytest.raises(InputError, match="label_smoothing"):
        build_loss("ce", label_smoothing=1.5)
    logits, target = make_batch()
    with pytest.raises(InputError, match="class_weights"):
        build_loss("ce", class_weights=[1.0, 2.0, 3.0])(logits, target)


def ref_nnpu(logits, target, missing):
    """Kiryo et al.'s non-negative PU risk, in numpy: (risk, negative-part bracket)."""
    logp, t = pixels(logits, target)
    z = logp[:, 1] - logp[:, 0]
    softplus = lambda v: np.logaddexp(0.0, v)  # noqa: E731
    positive = t == 1
    prior = positive.mean() / (1 - missing)
    bracket = softplus(z).mean() - prior * softplus(z[positive]).mean()
    return prior * softplus(-z[positive]).mean() + max(bracket, 0.0), bracket


def test_nnpu_without_missing_labels_is_cross_entropy():
    """π = the labelled share: the PU risk is exactly two-class cross-entropy."""
    for seed in range(3):
        logits, target = make_batch(seed)
        value = build_loss("nnpu", pu_missing_fraction=0.0)(logits, target).item()
        assert value == pytest.approx(ref_ce(logits, target), rel=1e-10)


@pytest.mark.parametrize("missing", [0.2, 0.6])
def test_nnpu_matches_reference_and_climbs_out_of_a_negative_risk(missing):
    logits, target = make_batch(7)
    expected, bracket = ref_nnpu(logits, target, missing)
    x = logits.clone().requires_grad_(True)
    loss = build_loss("nnpu", pu_missing_fraction=missing, pu_gamma=0.5)(x, target)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    # the gradient: of the whole risk, or, below zero, −γ × the bracket's (gradient ascent)
    y = logits.clone().requires_grad_(True)
    z = (y[:, 1] - y[:, 0])
    valid, positive = target != IGNORE, target == 1
    prior = positive.sum() / valid.sum() / (1 - missing)
    neg = torch.nn.functional.softplus(z)[valid].mean() - \
        prior * torch.nn.functional.softplus(z)[positive].mean()
    pos = prior * torch.nn.functional.softplus(-z)[positive].mean()
    (-0.5 * neg if bracket < 0 else pos + neg).backward()
    torch.testing.assert_close(x.grad, y.grad)
    if missing == 0.6:
        assert bracket < 0  # a large missing share makes the plain PU bracket negative here


def test_nnpu_recovers_particles_the_labels_miss():
    """One feature per pixel, particles at +1.5, background at −1.5 (σ 1); half the
    particles unlabelled. A per-pixel logistic model trained with cross-entropy learns to
    call the unlabelled ones background; with nnPU (missing share 0.5) it finds them."""
    g = torch.Generator().manual_seed(0)
    n = 4000
    particle = torch.rand(n, generator=g) < 0.3
    feature = torch.where(particle, 1.5, -1.5) + torch.randn(n, generator=g)
    labelled = particle & (torch.rand(n, generator=g) < 0.5)
    target = labelled.long().view(1, 1, n)
    image = feature.view(1, 1, 1, n)

    def recall(name: str, **kwargs) -> tuple[float, float]:
        torch.manual_seed(0)
        model = torch.nn.Conv2d(1, 2, 1)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        loss_fn = build_loss(name, **kwargs)
        for _ in range(300):
            opt.zero_grad()
            loss_fn(model(image), target).backward()
            opt.step()
        with torch.no_grad():
            called = model(image).argmax(1).view(-1).bool()
        tp = (called & particle).sum().item()
        return tp / particle.sum().item(), tp / max(called.sum().item(), 1)

    ce_recall, _ = recall("ce")
    pu_recall, pu_precision = recall("nnpu", pu_missing_fraction=0.5)
    assert ce_recall < 0.4 and pu_recall > 0.8  # Bayes-optimal recall here: 0.89
    assert pu_precision > 0.85


def test_nnpu_without_labelled_particles_calls_everything_background():
    """A batch with no labelled particle pixel: π = 0, the risk is cross-entropy against
    background, whatever the missing share."""
    logits, target = make_batch(8)
    target[target == 1] = 0
    x = logits.clone().requires_grad_(True)
    loss = build_loss("nnpu", pu_missing_fraction=0.4)(x, target)
    assert loss.item() == pytest.approx(ref_ce(logits, target), rel=1e-10)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_nnpu_bad_arguments():
    with pytest.raises(InputError, match="pu_missing_fraction"):
        build_loss("nnpu", pu_missing_fraction=1.0)
    logits, target = make_batch(n_classes=3)
    with pytest.raises(InputError, match="2 classes"):
        build_loss("nnpu")(logits, target)
