"""Text-only data synthesis (Unicorn): LLM backends, caption expansion (stage 1), instruction conversations
(stage 2), and the pipeline that runs them with the text stores (stage 3).

Imports nothing of ``mllm``: the stages produce files that ``modgap embed``, ``align`` and ``train`` read.
"""
