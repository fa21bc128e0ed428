"""Contrastive losses of universal embedders (UniME), as small modules over L2-normalised embeddings.

* :class:`DistillationKL` (stage 1, textual discriminative knowledge distillation): the student's softmax over
  its in-batch similarities is pulled towards the teacher's, ``KL(p_teacher || p_student)`` averaged over
  queries. Teacher and student may have different widths: only their similarity matrices meet.
* :class:`HardNegativeInfoNCE` (stage 2): InfoNCE at temperature ``tau`` where, for each query, candidates
  that score higher than ``sim(q, pos) + fn_margin`` are dropped as likely false negatives, and the
  ``hard_negatives`` most similar remaining candidates are the negatives. Selection is done without
  gradients; the loss is differentiable in the selected similarities. Ties at the k-th place go to the
  earlier candidate; with no candidate left, the query's loss is 0 (the positive alone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax over similarities / 0.02 needs more than bf16's 8 bits of mantissa."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class DistillationKL(nn.Module):
    def __init__(self, student_temperature: float = 0.02, teacher_temperature: float = 0.02):
        super().__init__()
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature

    def forward(
        self,
        student_q: torch.Tensor,
        student_c: torch.Tensor,
        teacher_q: torch.Tensor,
        teacher_c: torch.Tensor,
    ) -> torch.Tensor:
        """Queries (B, D) against candidates (N, D) on each side; for text-only distillation pass the same
        batch as queries and candidates."""
        student_q, student_c, teacher_q, teacher_c = map(_at_least_fp32, (student_q, student_c, teacher_q, teacher_c))
        s = F.normalize(student_q, dim=-1) @ F.normalize(student_c, dim=-1).T / self.student_temperature
        t = F.normalize(teacher_q, dim=-1) @ F.normalize(teacher_c, dim=-1).T
        log_p_student = F.log_softmax(s, dim=-1)
        log_p_teacher = F.log_softmax(t / self.teacher_temperature, dim=-1)
        return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")


def select_hard_negatives(
    sims: torch.Tensor, positive: torch.Tensor, fn_margin: float, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For similarities (B, N) and each row's positive column (B,): the columns of its hard negatives (B, k)
    and a mask (B, k) of which of them exist (fewer than k remain after the filter)."""
    with torch.no_grad():
        rows = torch.arange(sims.shape[0], device=sims.device)
        pos_sim = sims[rows, positive]
        keep = sims <= (pos_sim + fn_margin)[:, None]
        keep[rows, positive] = False
        scored = sims.masked_fill(~keep, float("-inf"))
        order = torch.sort(scored, dim=1, descending=True, stable=True).indices[:, :k]
        exists = torch.gather(keep, 1, order)
    return order, exists


class HardNegativeInfoNCE(nn.Module):
    def __init__(self, temperature: float = 0.02, fn_margin: float = 0.1, hard_negatives: int = 8):
        super().__init__()
        self.temperature, self.fn_margin, self.hard_negatives = temperature, fn_margin, hard_negatives

    def forward(
        self, query: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Queries (B, D) against candidates (N, D); ``positive[i]`` is the column of query i's positive
        (default: the diagonal, i.e. candidates are the batch's positives, possibly followed by extra
        negatives)."""
        query, candidates = _at_least_fp32(query), _at_least_fp32(candidates)
        sims = F.normalize(query, dim=-1) @ F.normalize(candidates, dim=-1).T
        if positive is None:
            positive = torch.arange(sims.shape[0], device=sims.device)
        columns, exists = select_hard_negatives(sims, positive, self.fn_margin, self.hard_negatives)
        rows = torch.arange(sims.shape[0], device=sims.device)
        pos_logit = sims[rows, positive] / self.temperature
        neg_logits = torch.gather(sims, 1, columns) / self.temperature
        logits = torch.cat([pos_logit[:, None], neg_logits.masked_fill(~exists, float("-inf"))], dim=1)
        return -(pos_logit - torch.logsumexp(logits, dim=1)).mean()
