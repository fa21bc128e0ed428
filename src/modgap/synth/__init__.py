"""Text-only data synthesis (Unicorn): LLM backends, caption expansion (stage 1).

Imports nothing of ``mllm``: the stages produce files that ``modgap embed``, ``align`` and ``train`` read.
"""
