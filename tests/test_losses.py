"""Each loss against values computed by hand (plain math, no torch losses) on 2 x 2 embeddings."""

import math

import pytest
import torch

from negclip.losses import AbsenceLoss, OmniNegLoss, PresenceLoss, clip_loss

SCALE = torch.tensor(2.0)
# Unit vectors at 0, 90, 45 and 180 degrees, so every cosine is 1, 0, ±0.7071 or -1.
E0 = [1.0, 0.0]
E90 = [0.0, 1.0]
E45 = [math.sqrt(0.5), math.sqrt(0.5)]
E180 = [-1.0, 0.0]


def cross_entropy(logits, target):
    """-log softmax(logits)[target], written out."""
    return -logits[target] + math.log(sum(math.exp(value) for value in logits))


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def test_clip_loss_matches_hand_value():
    images = [E0, E90]
    texts = [E45, E90]
    s = SCALE.item()
    image_to_text = [cross_entropy([s * dot(i, t) for t in texts], row) for row, i in enumerate(images)]
    text_to_image = [cross_entropy([s * dot(t, i) for i in images], row) for row, t in enumerate(texts)]
    expected = (sum(image_to_text) / 2 + sum(text_to_image) / 2) / 2

    value = clip_loss(torch.tensor(images), torch.tensor(texts), SCALE)

    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_presence_loss_matches_hand_value():
    images = [E0, E90]
    texts = [E0, E45]
    negated = [E45, E180]
    s = SCALE.item()
    candidates = texts + negated
    first = sum(cross_entropy([s * dot(i, c) for c in candidates], row) for row, i in enumerate(images)) / 2
    second = sum(cross_entropy([s * dot(t, i) for i in images], row) for row, t in enumerate(texts)) / 2
    third = sum(
        cross_entropy([s * dot(i, t), s * dot(i, n)], 0) for i, t, n in zip(images, texts, negated)
    ) / 2
    expected = (first + second + third) / 3

    value = PresenceLoss()(torch.tensor(images), torch.tensor(texts), torch.tensor(negated), SCALE)

    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_presence_loss_lower_when_negation_is_far():
    images = torch.tensor([E0, E90])
    texts = torch.tensor([E0, E90])
    near = PresenceLoss()(images, texts, torch.tensor([E45, E45]), SCALE)
    far = PresenceLoss()(images, texts, torch.tensor([E180, [0.0, -1.0]]), SCALE)
    assert far.item() < near.item()


def test_absence_loss_matches_hand_value():
    images = [E0, E90]
    texts = [E0, E90]
    absence = [E45, E90]
    s = SCALE.item()

    def symmetric(a_list, b_list):
        forward = sum(cross_entropy([s * dot(a, b) for b in b_list], row) for row, a in enumerate(a_list)) / 2
        backward = sum(cross_entropy([s * dot(b, a) for a in a_list], row) for row, b in enumerate(b_list)) / 2
        return (forward + backward) / 2

    lambda_orig, lambda_text, margin = 0.5, 2.0, 0.9
    hinge = sum(max(0.0, dot(t, a) + margin) for t, a in zip(texts, absence)) / 2
    expected = symmetric(images, absence) + lambda_orig * symmetric(images, texts) + lambda_text * hinge

    value = AbsenceLoss(lambda_orig, lambda_text, margin)(
        torch.tensor(images), torch.tensor(texts), torch.tensor(absence), SCALE
    )

    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_absence_hinge_zero_below_margin():
    # cos(T+, Ta) = -1 and margin 0.9: max(0, -1 + 0.9) = 0, so only the two InfoNCE terms remain.
    images = torch.tensor([E0, E90])
    texts = torch.tensor([E0, E90])
    absence = torch.tensor([E180, [0.0, -1.0]])
    with_hinge = AbsenceLoss(lambda_text=1.0, margin=0.9)(images, texts, absence, SCALE)
    without_hinge = AbsenceLoss(lambda_text=0.0, margin=0.9)(images, texts, absence, SCALE)
    assert with_hinge.item() == pytest.approx(without_hinge.item(), abs=1e-7)


def test_total_loss_weights_absence():
    images = torch.tensor([E0, E90])
    presence_batch = {"image_embeds": images, "text_embeds": torch.tensor([E0, E45]), "negated_embeds": torch.tensor([E45, E180])}
    absence_batch = {"image_embeds": images, "text_embeds": torch.tensor([E0, E90]), "absence_embeds": torch.tensor([E45, E90])}
    presence = PresenceLoss()(images, presence_batch["text_embeds"], presence_batch["negated_embeds"], SCALE)
    absence = AbsenceLoss()(images, absence_batch["text_embeds"], absence_batch["absence_embeds"], SCALE)

    result = OmniNegLoss(lambda_abs=0.25)(presence_batch, absence_batch, SCALE)

    assert result["loss"].item() == pytest.approx(presence.item() + 0.25 * absence.item(), rel=1e-6)
    assert result["presence_loss"].item() == pytest.approx(presence.item(), rel=1e-6)
    assert result["absence_loss"].item() == pytest.approx(absence.item(), rel=1e-6)


def test_total_loss_ablations():
    images = torch.tensor([E0, E90])
    presence_batch = {"image_embeds": images, "text_embeds": images, "negated_embeds": torch.tensor([E45, E45])}
    absence_batch = {"image_embeds": images, "text_embeds": images, "absence_embeds": torch.tensor([E45, E90])}
    only_presence = OmniNegLoss(use_absence=False)(presence_batch, absence_batch, SCALE)
    only_absence = OmniNegLoss(use_presence=False)(presence_batch, absence_batch, SCALE)
    assert only_presence["absence_loss"].item() == 0.0
    assert only_absence["presence_loss"].item() == 0.0
    with pytest.raises(ValueError, match="at least one"):
        OmniNegLoss(use_presence=False, use_absence=False)
