"""LoRA through peft, the same way for every recipe."""

from __future__ import annotations

from typing import Any


def train_lora(llm: Any, r: int, alpha: int, dropout: float, target_modules: list[str] | None = None) -> Any:
    """``llm`` with trainable LoRA adapters on all its linear layers (the output head excepted, as peft does
    for ``all-linear``), or on the modules named in ``target_modules`` (a multimodal model's language model);
    a model that already has an adapter continues training that one."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(llm, PeftModel):
        for name, p in llm.named_parameters():
            p.requires_grad_("lora_" in name)
        return llm
    if target_modules is not None:
        lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    else:
        lora = LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    return get_peft_model(llm, lora)
