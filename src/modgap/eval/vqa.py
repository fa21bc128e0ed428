"""Visual question answering: generate an answer per question about a stored image, score it as VQAv2 does.

Data rows: ``id`` (the question's), ``image`` (the id of its embedding in the store), ``question``, and the
reference answer(s) in ``answer`` (a string) or ``answers`` (a list, e.g. VQAv2's ten human answers);
an optional ``type`` groups the figures (e.g. the attribute asked about).

Scoring follows the VQAv2 evaluation script (Antol et al. 2015; ``vqaEval.py``): answers are normalised —
lower case, punctuation removed (a period between digits kept), number words to digits, articles dropped,
common contractions restored — and a prediction's accuracy is min(1, matching references / 3), averaged
over the ten leave-one-out subsets of the references. With one reference that is normalised exact match.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modgap.errors import ModgapError
from modgap.files import read_rows
from modgap.progress import ProgressFactory, silent

if TYPE_CHECKING:
    from modgap.store.checks import OnBad

# From the VQAv2 evaluation script's tables (a selection of its contraction list: the forms that lose their
# apostrophe in free-form answers).
_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hes": "he's", "im": "i'm",
    "isnt": "isn't", "itll": "it'll", "ive": "i've", "shouldnt": "shouldn't", "thats": "that's",
    "theres": "there's", "theyre": "they're", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
}  # fmt: skip
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_answer(text: str) -> str:
    """An answer as the VQAv2 script compares it."""
    given = text.replace("\n", " ").replace("\t", " ").strip().lower()
    text = given
    for p in _PUNCT:  # the script tests the given answer, not the one being rewritten
        if (p + " " in given or " " + p in given) or re.search(_COMMA_NUMBER, given) is not None:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy of one prediction: min(1, matches / 3) averaged over leave-one-out subsets."""
    if not answers:
        raise ModgapError("a question needs at least one reference answer")
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    scores = []
    for left_out in range(len(refs)):
        matches = sum(r == pred for i, r in enumerate(refs) if i != left_out)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def row_answers(row: dict[str, Any], where: str) -> list[str]:
    value = row.get("answers", row.get("answer"))
    if isinstance(value, str) and value.strip():
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ModgapError(f"{where}: no reference answer ('answer' string or 'answers' list)")


@dataclass
class VQAEval:
    metrics: dict[str, float]  # accuracy overall and per type
    rows: list[dict[str, Any]]  # id, image, question, prediction, answers, accuracy
    missing: list[str]  # question ids whose image is not in the store
    bad: list[dict[str, str]] = field(default_factory=list)  # NaN/Inf/zero image rows left out


def evaluate_vqa(
    model: Any,
    data: str | Path,
    embeddings: str | Path,
    *,
    batch_size: int = 32,
    limit: int | None = None,
    suffix: str = "",
    on_bad: OnBad = "error",
    progress: ProgressFactory = silent,
    **generate_kwargs: Any,
) -> VQAEval:
    """Answer every question of ``data`` whose image is in ``embeddings`` (the question, plus ``suffix``, is the
    prompt) and score the answers."""
    from modgap.eval.caption import iter_batches
    from modgap.mllm.infer import StoreInputs

    rows = read_rows(data, what="question file")
    if limit is not None:
        rows = rows[:limit]
    inputs = StoreInputs(model, embeddings, on_bad)
    index = inputs.store.id_index()
    present, missing = [], []
    row_of_id: dict[str, int] = {}
    for n, row in enumerate(rows, 1):
        where = f"{data}: row {n}"
        for key in ("id", "image", "question"):
            if not isinstance(row.get(key), str | int) or str(row[key]).strip() == "":
                raise ModgapError(f"{where} has no {key!r}")
        if str(row["id"]) in row_of_id:
            raise ModgapError(f"{where}: question id {row['id']!r} already on row {row_of_id[str(row['id'])]}")
        row_of_id[str(row["id"])] = n
        answers = row_answers(row, f"{where} (id {row['id']!r})")
        (present if str(row["image"]) in index else missing).append((row, answers))
    keep = inputs.usable([index[str(row["image"])] for row, _ in present])
    present = [p for p, ok in zip(present, keep, strict=True) if ok]
    if not present:
        raise ModgapError(f"{data}: no question's image is in {embeddings}")
    scores: dict[str, list[float]] = defaultdict(list)
    out_rows = []
    with progress("answering", len(present)) as advance:
        for batch in iter_batches(present, batch_size):
            visual = inputs.rows([index[str(row["image"])] for row, _ in batch])
            prompts = [f"{row['question']}{suffix}" for row, _ in batch]
            replies = model.generate(visual, prompts, **generate_kwargs)
            for (row, answers), reply in zip(batch, replies, strict=True):
                accuracy = vqa_accuracy(reply, answers)
                scores["accuracy"].append(accuracy)
                if row.get("type"):
                    scores[f"accuracy/{row['type']}"].append(accuracy)
                out_rows.append({"id": str(row["id"]), "image": str(row["image"]), "question": row["question"],
                                 "prediction": reply, "answers": answers, "accuracy": accuracy})  # fmt: skip
            advance(len(batch))
    metrics = {k: sum(v) / len(v) for k, v in sorted(scores.items())}
    return VQAEval(metrics, out_rows, [str(row["id"]) for row, _ in missing], inputs.bad.rows)
