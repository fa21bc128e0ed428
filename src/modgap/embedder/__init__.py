"""Universal multimodal embedders trained from an MLLM (UniME). This release holds the losses."""

from modgap.embedder.losses import DistillationKL, HardNegativeInfoNCE, select_hard_negatives

__all__ = ["DistillationKL", "HardNegativeInfoNCE", "select_hard_negatives"]
