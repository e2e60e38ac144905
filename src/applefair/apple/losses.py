"""APPLE's objective terms.

L_D = CE(D_p(sg(f_p)), a)                 (optionally label-smoothed)
L_G = L_seg(D_s(f_p), y) + adv(D_p(f_p), a) + lambda * ||G_p(f_o)||^2
adv, by `objective`:
- "negce":   -alpha * CE(D_p(f_p), a)                     (the paper; saturates once D is confident)
- "kl":      alpha * KL(uniform || softmax(D_p(f_p)))     (pushes D's output to chance; never saturates)
- "grl":     -alpha * CE through a gradient-reversal layer, D updated in the same step (DANN)
- "none":    no adversarial term (a control)
and, with any objective, -beta * H(softmax(D_p(f_p))) (the paper's entropy term; it raises D_p's
entropy through the perturber only, D_p's own weights do not follow it), and
+gamma * group_mean_gap(pool(f_p), a): the distance between each group's mean pooled statistics
and the other groups' (linear erasure: when the groups' means are equal, no linear probe of those
statistics does better than chance in expectation, whatever discriminator was played against),
and +dist_weight * group_distribution_gap(...): a distance between the groups' whole distributions
(an energy, Gaussian-MMD or Sinkhorn divergence, `geomloss`), of pooled statistics or of the
latent's spatial tokens.
Samples with an unknown group (a = -1) contribute to L_seg only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

OBJECTIVES = ("negce", "kl", "grl", "none")
DIST_LOSSES = ("none", "energy", "gaussian", "sinkhorn")


def _known(logits: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    keep = groups >= 0
    if not keep.any():
        return None
    return logits[keep], groups[keep]


def known_ce(logits: torch.Tensor, groups: torch.Tensor, label_smoothing: float = 0.0,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over samples with a known group (0 if none)."""
    k = _known(logits, groups)
    if k is None:
        return logits.sum() * 0.0
    return F.cross_entropy(k[0], k[1], weight=weight, label_smoothing=label_smoothing)


def known_entropy(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the discriminator's softmax over samples with a known group."""
    k = _known(logits, groups)
    if k is None:
        return logits.sum() * 0.0
    logp = F.log_softmax(k[0], dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def known_kl_uniform(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """KL(uniform || softmax(logits)) = -mean_k log p_k - log K, over samples with a known group."""
    k = _known(logits, groups)
    if k is None:
        return logits.sum() * 0.0
    logp = F.log_softmax(k[0], dim=1)
    return (-logp.mean(1) - math.log(logp.shape[1])).mean()


def known_accuracy(logits: torch.Tensor, groups: torch.Tensor) -> float:
    """Group-balanced accuracy (mean of per-group recalls): 1/K is chance whatever the group sizes."""
    k = _known(logits, groups)
    if k is None:
        return float("nan")
    pred, true = k[0].argmax(1), k[1]
    recalls = [float((pred[true == g] == g).float().mean()) for g in true.unique()]
    return sum(recalls) / len(recalls)


def group_mean_gap(features: torch.Tensor, groups: torch.Tensor, num_groups: int,
                   reference: torch.Tensor | None = None) -> torch.Tensor:
    """mean_g ||(m_g - m_rest) / s||^2 / P over the groups of the batch: how far apart the groups are.

    `features` (B, P) are pooled latent statistics; m_g the mean of group g, m_rest that of the
    other known samples, s the per-feature standard deviation of `reference` (B, P) — the
    unperturbed latent's statistics, so that the perturber cannot shrink the distance by inflating
    its output — or of `features` themselves (detached) without one. The estimate is the plain
    squared distance of batch means, biased upwards by their sampling noise, which also rewards a
    smaller spread within each group. The noise-corrected (unbiased) version was tried and is
    exploitable: the perturber's BatchNorm couples a batch's samples, so it can make the batch's
    group means equal and then drive the estimate without bound below zero by inflating the
    spread (docs/ablation.md). Groups with fewer than two samples in the batch (or two outside it)
    are skipped; with none left the term is 0.
    """
    keep = groups >= 0
    x, a = features[keep].float(), groups[keep]
    if len(x) < 4:
        return features.sum() * 0.0
    ref = (reference[keep] if reference is not None else x).detach().float()
    z = x / ref.std(0, unbiased=True).clamp_min(1e-6)
    terms = []
    for g in range(num_groups):
        inside = a == g
        if int(inside.sum()) < 2 or int((~inside).sum()) < 2:
            continue
        terms.append((z[inside].mean(0) - z[~inside].mean(0)).pow(2).sum() / z.shape[1])
    if not terms:
        return features.sum() * 0.0
    return torch.stack(terms).mean()


def group_distribution_gap(points: torch.Tensor, groups: torch.Tensor, num_groups: int, loss: str = "energy",
                           blur: float = 0.5, max_points: int = 512) -> torch.Tensor:
    """Mean over the groups of the batch of D(points of group g, points of the other known samples).

    `points`: (B, P) one point per sample (pooled statistics), or (B, T, P) T points per sample
    (spatial tokens), already standardised. D is geomloss's `SamplesLoss(loss, blur)`: 0 when the two
    point clouds are the same distribution. Clouds larger than `max_points` are subsampled (the torch
    random stream). Groups with fewer than two samples in the batch (or two outside it) are skipped.
    """
    if loss not in DIST_LOSSES or loss == "none":
        raise ValueError(f"distribution loss '{loss}' is not known (expected one of: {', '.join(DIST_LOSSES[1:])})")
    from geomloss import SamplesLoss

    keep = groups >= 0
    x, a = points[keep].float(), groups[keep]
    divergence = SamplesLoss(loss, blur=blur, backend="tensorized")
    terms = []
    for g in range(num_groups):
        inside = a == g
        if int(inside.sum()) < 2 or int((~inside).sum()) < 2:
            continue
        clouds = []
        for sel in (inside, ~inside):
            cloud = x[sel].reshape(-1, x.shape[-1])
            if len(cloud) > max_points:
                cloud = cloud[torch.randperm(len(cloud), device=cloud.device)[:max_points]]
            clouds.append(cloud)
        terms.append(divergence(*clouds))
    if not terms:
        return points.sum() * 0.0
    return torch.stack(terms).mean()


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient times -scale backward."""
    return _Reverse.apply(x, scale)


def adversarial_term(objective: str, logits: torch.Tensor, groups: torch.Tensor, alpha: float) -> torch.Tensor:
    """The perturber's adversarial loss from D_p's logits on f_p (added to L_seg).

    For "grl" the logits must come from gradient-reversed latents; the term is then +CE, whose
    gradient reaches the perturber negated and scaled by alpha (the reversal carries alpha), and
    D_p's own weights with their sign (D_p steps on it in the same step). The entropy term is not
    here: it must not pass a reversal, see `entropy_term`."""
    if objective == "negce":
        return -alpha * known_ce(logits, groups)
    if objective == "kl":
        return alpha * known_kl_uniform(logits, groups)
    if objective == "grl":
        return known_ce(logits, groups)
    if objective == "none":
        return logits.sum() * 0.0
    raise ValueError(f"objective '{objective}' is not known (expected one of: {', '.join(OBJECTIVES)})")


def entropy_term(logits: torch.Tensor, groups: torch.Tensor, beta: float) -> torch.Tensor:
    """-beta * H(softmax(D_p(f_p))): minimising it raises D_p's entropy. `logits` must come from latents
    that did *not* pass a gradient reversal, and from a D_p whose weights are not being trained by this
    term (otherwise D_p would learn to be uncertain): the perturber alone answers to it."""
    return -beta * known_entropy(logits, groups)


class SegLoss:
    """Per-sample Dice + CE matching the segmentor's head.

    "sigmoid": one logit per foreground channel, mask (B, C, H, W) in {0, 1}.
    "softmax": one logit per class, mask (B, 1, H, W) of class indices.
    """

    def __init__(self, head: str = "sigmoid"):
        if head not in ("sigmoid", "softmax"):
            raise ValueError(f"head '{head}' is not known (expected sigmoid or softmax)")
        self.head = head
        self.dice = (DiceLoss(sigmoid=True, reduction="none") if head == "sigmoid"
                     else DiceLoss(softmax=True, to_onehot_y=True, reduction="none"))

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.dice(logits, target).flatten(1).mean(1)
        if self.head == "sigmoid":
            ce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
        else:
            ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
        return dice + ce.flatten(1).mean(1)


def fidelity_loss(logits: torch.Tensor, reference: torch.Tensor, head: str = "sigmoid") -> torch.Tensor:
    """Per-sample distance from the reference model's output (distillation): binary cross-entropy to its
    probabilities (sigmoid head) or KL(reference || output) (softmax head); 0 gradient exactly at the reference.
    Unlike Dice + CE to soft targets, whose Dice part rewards pushing probabilities to 0 or 1, it keeps a
    patched model where the deployed model was unless another term moves it."""
    if head == "sigmoid":
        bce = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(reference), reduction="none")
        return bce.flatten(1).mean(1)
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True, reduction="none")
    return kl.sum(1).flatten(1).mean(1)


def balanced_weights(groups: torch.Tensor, group_freq: torch.Tensor) -> torch.Tensor:
    """Per-sample weights 1 / (K * freq(group)) (unknown group: 1), normalised to mean 1.

    Every group then weighs the same in L_seg, as with group-balanced sampling."""
    k = len(group_freq)
    w = torch.ones(len(groups), dtype=torch.float32, device=group_freq.device)
    known = groups >= 0
    w[known] = 1.0 / (k * group_freq[groups[known]].clamp_min(1e-6))
    return w / w.mean()
