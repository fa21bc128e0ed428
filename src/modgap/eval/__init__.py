"""Evaluation: caption metrics (pycocoevalcap BLEU/CIDEr) and model-level caption evaluation."""
