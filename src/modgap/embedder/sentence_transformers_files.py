"""The files that let ``sentence_transformers.SentenceTransformer(DIR)`` load a stock embedder checkpoint with
modgap's own computation: the model's base (``AutoModel``) final hidden states, last-token pooling, L2
normalisation, and the prompt built from modgap's templates.

sentence-transformers (≥ 5.4) turns every input — a string, an image, ``{"text": ..., "image": ...}`` — into a
chat message and renders it through the processor's ``apply_chat_template``. A chat template passed in the
module's ``processing_kwargs`` (saved in ``sentence_bert_config.json``; the checkpoint's own
``chat_template.jinja`` is left as it is, for generation) renders such a message as the matching modgap
template, and the processor tokenises it as ``processor(text=prompt, images=...)`` does: the same vectors as
``modgap embed`` and UniME's Quick Start. Written as plain JSON: saving needs no sentence-transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from modgap.embedder.stock import TEXT_SLOT
from modgap.files import write_json

# The message's text parts joined, and whether it holds an image (flat string content or typed parts).
_READ_MESSAGE = (
    "{%- set ns = namespace(text='', image=false) -%}"
    "{%- for m in messages -%}{%- if m.content is string -%}{%- set ns.text = ns.text + m.content -%}"
    "{%- else -%}{%- for c in m.content -%}{%- if c.type == 'text' -%}{%- set ns.text = ns.text + c.text -%}"
    "{%- elif c.type == 'image' -%}{%- set ns.image = true -%}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
)


def _literal(text: str) -> str:
    # A JSON string is a valid Jinja string literal (the same backslash escapes).
    return "{{- " + json.dumps(text) + " -}}"


def _render(template: str) -> str:
    before, slot, after = template.partition(TEXT_SLOT)
    return _literal(before) + ("{{- ns.text -}}" + _literal(after) if slot else "")


def chat_template(templates: dict[str, str]) -> str:
    """A Jinja chat template rendering one user message as modgap's template of its kind."""
    return (
        _READ_MESSAGE
        + "{%- if ns.image and ns.text -%}" + _render(templates["image_text"])
        + "{%- elif ns.image -%}" + _render(templates["image"])
        + "{%- else -%}" + _render(templates["text"]) + "{%- endif -%}"
    )  # fmt: skip


def write_sentence_transformers_files(model_dir: str | Path, templates: dict[str, str], dim: int) -> None:
    """``modules.json`` (Transformer at the root, then pooling and normalisation) and the modules' configs."""
    root = Path(model_dir)
    output = {"method": "forward", "method_output_name": "last_hidden_state"}
    modules = [
        ("sentence_transformers.base.modules.transformer.Transformer", ""),
        ("sentence_transformers.sentence_transformer.modules.pooling.Pooling", "1_Pooling"),
        ("sentence_transformers.base.modules.normalize.Normalize", "2_Normalize"),
    ]
    write_json(root / "modules.json", [{"idx": i, "name": str(i), "path": path, "type": kind}
                                       for i, (kind, path) in enumerate(modules)])  # fmt: skip
    write_json(root / "sentence_bert_config.json", {
        "transformer_task": "feature-extraction",
        "modality_config": {"text": output, "image": output, "message": {**output, "format": "structured"}},
        "module_output_name": "token_embeddings",
        "processing_kwargs": {"chat_template": {"chat_template": chat_template(templates)}},
    })  # fmt: skip
    write_json(root / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })  # fmt: skip
    for folder in ("1_Pooling", "2_Normalize"):
        (root / folder).mkdir(exist_ok=True)
    write_json(root / "1_Pooling" / "config.json",
               {"embedding_dimension": dim, "pooling_mode": "lasttoken", "include_prompt": True})  # fmt: skip
    write_json(
        root / "2_Normalize" / "config.json",
        {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
    )
