"""Conversations to token ids: chat template, visual placeholder, loss mask on assistant tokens.

A sample is a list of messages ``{"role": "system"|"user"|"assistant", "content": str}``; one user
message holds the placeholder ``<image>``. The conversation is rendered with the tokenizer's chat
template, the placeholder is cut out of the text and replaced by ``k`` positions holding
:data:`VISUAL_ID` (the model puts the projected visual tokens there), and labels are the token ids on
the assistant replies (end-of-turn included, so the model learns to stop) and :data:`IGNORE` elsewhere.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from modgap.errors import ModgapError

IMAGE_PLACEHOLDER = "<image>"
VISUAL_ID = -200  # marks visual positions in input ids (as LLaVA); never looked up in the vocabulary
IGNORE = -100  # label of positions without loss (the value 🤗 losses ignore)

# Used when the tokenizer has no chat template of its own (base LMs); override with --chat-template.
FALLBACK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def ensure_chat_template(tokenizer: Any, template: str | None = None) -> None:
    """Give ``tokenizer`` the template to use: ``template`` if given, else its own, else the fallback."""
    if template:
        tokenizer.chat_template = template
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE


def caption_messages(caption: str | None, prompt: str) -> list[dict[str, str]]:
    """A pretraining sample: an instruction with the placeholder, answered by the caption."""
    user = prompt if IMAGE_PLACEHOLDER in prompt else f"{IMAGE_PLACEHOLDER}\n{prompt}"
    messages = [{"role": "user", "content": user}]
    if caption is not None:
        messages.append({"role": "assistant", "content": caption})
    return messages


def llava_messages(conversations: list[dict[str, Any]], where: str) -> list[dict[str, str]]:
    """LLaVA/Bunny ``conversations`` (``from``/``value``) to chat messages; errors name ``where``."""
    if not isinstance(conversations, list) or not conversations:
        raise ModgapError(f"{where}: 'conversations' must be a non-empty list")
    out = []
    for turn in conversations:
        if not isinstance(turn, dict):
            raise ModgapError(f"{where}: each conversation turn must be an object with 'from' and 'value'")
        speaker, value = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
        role = ROLES.get(str(speaker).lower())
        if role is None or not isinstance(value, str):
            raise ModgapError(f"{where}: turn {turn!r} needs 'from' (human/gpt/system) and a string 'value'")
        out.append({"role": role, "content": value})
    if not any(m["role"] == "assistant" for m in out):
        raise ModgapError(f"{where}: conversation has no assistant ('gpt') turn to learn from")
    return out


def place_image(messages: list[dict[str, str]], where: str) -> tuple[list[dict[str, str]], bool]:
    """Check the placeholder: exactly one, in a user turn. Without one it goes in front of the first user
    turn (LLaVA's convention for caption data); returns whether it was added."""
    count = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    in_assistant = any(IMAGE_PLACEHOLDER in m["content"] for m in messages if m["role"] != "user")
    if count > 1 or in_assistant:
        raise ModgapError(
            f"{where}: {IMAGE_PLACEHOLDER} must appear once, in a user turn (found {count}"
            f"{', in a non-user turn' if in_assistant else ''}); a sample has one image embedding"
        )
    if count == 1:
        return messages, False
    out = [dict(m) for m in messages]
    for m in out:
        if m["role"] == "user":
            m["content"] = f"{IMAGE_PLACEHOLDER}\n{m['content']}"
            return out, True
    raise ModgapError(f"{where}: conversation has no user turn to hold {IMAGE_PLACEHOLDER}")


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]], text: str) -> list[tuple[int, int]]:
    """Character spans of the assistant replies in ``text`` (the full rendering), found by rendering
    each prefix of the conversation; the template must render conversations incrementally."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1])
        if not text.startswith(before) or not text.startswith(through) or len(through) < len(before):
            raise ModgapError(
                "the chat template does not render conversations incrementally (a prefix of the "
                "conversation renders differently), so assistant tokens cannot be located; pass a "
                "template with --chat-template"
            )
        spans.append((len(before), len(through)))
    return spans


# Encodings already computed in this process, by tokenizer files and inputs: several models trained on the same
# data in one process (the demo's aligner rows) render each conversation's template once (three Jinja
# renders and a tokenizer call per sample otherwise: most of a small training set's set-up time).
_ENCODED: dict[tuple, Encoded] = {}
_ENCODED_MAX = 1 << 17


def encode(
    tokenizer: Any,
    messages: list[dict[str, str]],
    num_visual_tokens: int,
    *,
    max_length: int | None = None,
    add_generation_prompt: bool = False,
) -> Encoded:
    """Token ids and labels of one conversation (see the module docstring).

    Over ``max_length``, the sample is cut from the end: it keeps its visual tokens and whatever of the
    replies fits. :class:`ModgapError` if nothing of a reply would remain.
    """
    key = (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", None), len(tokenizer),
           getattr(tokenizer, "chat_template", None), tuple((m["role"], m["content"]) for m in messages),
           num_visual_tokens, max_length, add_generation_prompt)  # fmt: skip
    if (hit := _ENCODED.get(key)) is not None:
        return Encoded(list(hit.input_ids), list(hit.labels), hit.truncated)
    enc = _encode(tokenizer, messages, num_visual_tokens, max_length, add_generation_prompt)
    if len(_ENCODED) >= _ENCODED_MAX:
        _ENCODED.clear()
    _ENCODED[key] = Encoded(list(enc.input_ids), list(enc.labels), enc.truncated)
    return enc


def _encode(
    tokenizer: Any,
    messages: list[dict[str, str]],
    num_visual_tokens: int,
    max_length: int | None,
    add_generation_prompt: bool,
) -> Encoded:
    text = render(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    spans = [] if add_generation_prompt else assistant_spans(tokenizer, messages, text)
    starts = [s for s, _ in spans]
    ids: list[int] = []
    labels: list[int] = []
    pos = 0
    for n, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if n:
            ids.extend([VISUAL_ID] * num_visual_tokens)
            labels.extend([IGNORE] * num_visual_tokens)
            pos += len(IMAGE_PLACEHOLDER)
        if piece:
            enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            for tid, (a, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=False):
                c = pos + a
                j = bisect.bisect_right(starts, c) - 1
                ids.append(tid)
                labels.append(tid if j >= 0 and c < spans[j][1] else IGNORE)
        pos += len(piece)
    truncated = False
    if max_length is not None and len(ids) > max_length:
        visual = ids.count(VISUAL_ID)
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
        if ids.count(VISUAL_ID) != visual:
            raise ModgapError(f"longer than max_length={max_length} tokens and the cut would remove visual tokens")
        if not add_generation_prompt and all(label == IGNORE for label in labels):
            raise ModgapError(f"longer than max_length={max_length} tokens with no reply token left after cutting")
    return Encoded(ids, labels, truncated)
