"""The Omni-NegCLIP objectives, as in the authors' released code.

Every input embedding is L2-normalised, with shape (batch, dim); `logit_scale` is the exponentiated scale s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of image-to-text and text-to-image cross-entropy over the batch."""
    logits_per_image = logit_scale * image_embeds @ text_embeds.t()
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels)) / 2


class PresenceLoss(nn.Module):
    """Presence objective: each image prefers its caption T+ over T-, a caption made false by negating an
    object the image contains.

    L1 = CE(s * I [T+; T-]^T, arange(B)) over 2B candidate captions;
    L2 = CE(s * T+ I^T, arange(B));
    L3 = per-sample two-way CE(s * [<I, T+>, <I, T->], label 0);
    L_pres = (L1 + L2 + L3) / 3.
    """

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        negated_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> torch.Tensor:
        batch = image_embeds.shape[0]
        labels = torch.arange(batch, device=image_embeds.device)
        candidates = torch.cat([text_embeds, negated_embeds])  # (2B, dim)
        image_to_text = F.cross_entropy(logit_scale * image_embeds @ candidates.t(), labels)
        text_to_image = F.cross_entropy(logit_scale * text_embeds @ image_embeds.t(), labels)
        positive = (image_embeds * text_embeds).sum(dim=-1)
        negative = (image_embeds * negated_embeds).sum(dim=-1)
        pair_logits = logit_scale * torch.stack([positive, negative], dim=1)  # (B, 2)
        pairwise = F.cross_entropy(pair_logits, torch.zeros_like(labels))
        return (image_to_text + text_to_image + pairwise) / 3


class AbsenceLoss(nn.Module):
    """Absence objective: each image also matches Ta, a caption that negates a plausible object the image does
    not contain (so Ta stays true), while Ta stays distinct from the original caption T+.

    L_abs = CLIP(I, Ta) + lambda_orig * CLIP(I, T+) + lambda_text * mean(max(0, cos(T+, Ta) + margin)).
    """

    def __init__(self, lambda_orig: float = 1.0, lambda_text: float = 1.0, margin: float = 0.9):
        super().__init__()
        self.lambda_orig = lambda_orig
        self.lambda_text = lambda_text
        self.margin = margin

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        absence_embeds: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> torch.Tensor:
        absence_term = clip_loss(image_embeds, absence_embeds, logit_scale)
        original_term = clip_loss(image_embeds, text_embeds, logit_scale)
        cosine = (text_embeds * absence_embeds).sum(dim=-1)
        separation = torch.clamp(cosine + self.margin, min=0).mean()
        return absence_term + self.lambda_orig * original_term + self.lambda_text * separation


class OmniNegLoss(nn.Module):
    """Total loss L = L_pres + lambda_abs * L_abs, over one presence batch and one absence batch."""

    def __init__(
        self,
        lambda_abs: float = 1.0,
        lambda_orig: float = 1.0,
        lambda_text: float = 1.0,
        margin: float = 0.9,
        use_presence: bool = True,
        use_absence: bool = True,
    ):
        super().__init__()
        if not (use_presence or use_absence):
            raise ValueError("at least one of the presence and absence objectives must be on")
        self.presence = PresenceLoss()
        self.absence = AbsenceLoss(lambda_orig, lambda_text, margin)
        self.lambda_abs = lambda_abs
        self.use_presence = use_presence
        self.use_absence = use_absence

    def forward(self, presence_batch: dict, absence_batch: dict, logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the total loss and its parts, keyed "loss", "presence_loss" and "absence_loss".

        Each batch maps image_embeds, text_embeds and negated_embeds (presence) or absence_embeds (absence)
        to normalised (B, dim) tensors."""
        zero = logit_scale.new_zeros(())
        presence = (
            self.presence(
                presence_batch["image_embeds"],
                presence_batch["text_embeds"],
                presence_batch["negated_embeds"],
                logit_scale,
            )
            if self.use_presence
            else zero
        )
        absence = (
            self.absence(
                absence_batch["image_embeds"],
                absence_batch["text_embeds"],
                absence_batch["absence_embeds"],
                logit_scale,
            )
            if self.use_absence
            else zero
        )
        return {"loss": presence + self.lambda_abs * absence, "presence_loss": presence, "absence_loss": absence}
