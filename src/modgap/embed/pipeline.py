"""`modgap embed`: unpaired images and texts into embedding stores, resumable and multi-process.

* DataLoader worker processes decode images and tokenise texts while the model runs.
* Texts are bucketed by length inside windows of a few batches (less padding); each window is
  written back in input order, so a store's row order is the input order whatever the bucketing.
* Resume: ids already in the store are skipped; rows reach the store one complete shard at a time,
  so a killed run loses at most the shard in progress, and a rerun recomputes exactly that.
* Many processes (torchrun / accelerate launch): rank r takes the r-th contiguous block of the
  input, writes its own sub-store, and rank 0 moves the shards into one store with one manifest.
* Unreadable, corrupt, truncated or missing images and empty texts are skipped and listed in
  ``failures.jsonl`` inside the store (id, path, reason).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from modgap.distributed import barrier, init_from_env, local_device, rank_slice
from modgap.embed.inputs import Columns, Inputs, read_inputs
from modgap.encoders import IMAGE, TEXT, Encoder, Prepared
from modgap.errors import ModgapError
from modgap.files import write_jsonl, write_text
from modgap.hub import use_offline_mode
from modgap.progress import ProgressFactory, silent
from modgap.store.manifest import MANIFEST_NAME
from modgap.store.merge import merge_sub_stores
from modgap.store.store import EmbeddingStore, StoreWriter

FAILURES = "failures.jsonl"
RANK_DIR = ".rank-{rank}"


def default_workers() -> int:
    """Half the cores for decoding/tokenising (the model's threads use the rest), at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


@dataclass
class EmbedOptions:
    batch_size: int = 64
    num_workers: int = field(default_factory=default_workers)
    dtype: str = "float16"
    shard_rows: int | None = None  # rows per committed shard (default: ~256 MiB)
    window_batches: int = 16  # texts are length-sorted within windows of this many batches


@dataclass
class EmbedSummary:
    modality: str
    out: str
    embedded: int
    already_stored: int
    failed: int
    seconds: float

    def line(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.modality}: embedded {self.embedded} ({rate:,.1f}/s), {self.already_stored} already stored, "
            f"{self.failed} failed" + (f" (see {Path(self.out) / FAILURES})" if self.failed else "") + f" -> {self.out}"
        )


# ---------------------------------------------------------------------------------------------
# Datasets run in worker processes
# ---------------------------------------------------------------------------------------------
class _ImageItems(Dataset):
    def __init__(
        self,
        items: list[tuple[str, Any]],
        prep: Callable[[list[Image.Image]], Prepared],
        dataset: Any = None,
        column: str = "image",
        whole_batches: bool = False,
    ):
        self.items, self.prep, self.dataset, self.column = items, prep, dataset, column
        self.whole_batches = whole_batches  # decode here, prepare the batch in the collate (same worker)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Prepared | None, str | None]:
        _, src = self.items[i]
        try:
            if self.dataset is not None:
                image = self.dataset[src][self.column]
            else:
                image = Image.open(src)
                image.load()  # decode now: truncated files fail here, not inside the processor
            if self.whole_batches:
                return i, image.convert("RGB"), None  # type: ignore[return-value]
            prepared = self.prep([image.convert("RGB")])
        except FileNotFoundError:
            return i, None, "missing file"
        except UnidentifiedImageError:
            return i, None, "not a readable image"
        except (OSError, SyntaxError, ValueError) as e:
            return i, None, f"corrupt or truncated image ({e})"
        return i, {k: v[0] for k, v in prepared.items()}, None


def _collate_images(samples: list[tuple[int, Prepared | None, str | None]]) -> tuple[list[int], Prepared, list]:
    ok = [(i, x) for i, x, err in samples if x is not None]
    failed = [(i, err) for i, x, err in samples if x is None]
    batch = {k: torch.stack([x[k] for _, x in ok]) for k in ok[0][1]} if ok else {}
    return [i for i, _ in ok], batch, failed


class _CollateWholeBatch:
    """For processors whose per-image output varies in size (prompts with image tokens, tiles): the decoded
    images of a batch go through the processor together, in the worker that decoded them."""

    def __init__(self, prep: Callable[[list[Image.Image]], Prepared]):
        self.prep = prep

    def __call__(self, samples: list[tuple[int, Any, str | None]]) -> tuple[list[int], Prepared, list]:
        ok = [(i, x) for i, x, err in samples if x is not None]
        failed = [(i, err) for i, x, err in samples if x is None]
        return [i for i, _ in ok], (self.prep([x for _, x in ok]) if ok else {}), failed


class _TextBatches(Dataset):
    """Item b is the tokenised batch b (its rows were chosen by length bucketing)."""

    def __init__(self, texts: list[str], batches: list[list[int]], prep: Callable[[list[str]], Prepared]):
        self.texts, self.batches, self.prep = texts, batches, prep

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[list[int], Prepared]:
        idx = self.batches[b]
        return idx, self.prep([self.texts[i] for i in idx])


def bucketed_batches(lengths: list[int], batch_size: int, window: int) -> list[list[int]]:
    """Batches of indices, length-sorted within consecutive windows of ``window`` batches."""
    out = []
    span = batch_size * window
    for w0 in range(0, len(lengths), span):
        idx = sorted(range(w0, min(w0 + span, len(lengths))), key=lambda i: lengths[i])
        out += [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def _existing_ids(path: Path, encoder: Encoder, modality: str, options: EmbedOptions) -> set[str]:
    """Ids already in the store at ``path`` (a resumed run), after checking that they were made the way this
    run makes vectors: rows of another encoder (weights hash), features or settings are never mixed in."""
    if not (path / MANIFEST_NAME).exists():
        return set()
    store = EmbeddingStore.open(path)
    recorded, now = store.manifest.encoder or {}, encoder.describe()
    compared = sorted(set(recorded) & set(now) - ({"max_text_length"} if modality == IMAGE else set()))
    differ = [f"{k} ({recorded[k]!r} -> {now[k]!r})" for k in compared if recorded[k] != now[k]]
    differ += [f"{k} (none -> {now[k]!r})" for k in sorted(set(now) - set(recorded)) if k in ("features", "tokens")]
    if store.manifest.modality not in (None, modality):
        differ.append(f"modality ({store.manifest.modality!r} -> {modality!r})")
    if store.manifest.dtype != options.dtype:
        differ.append(f"dtype ({store.manifest.dtype!r} -> {options.dtype!r})")
    if differ:
        raise ModgapError(
            f"{path}: cannot add to this store: its rows were embedded differently ({', '.join(differ)}); "
            "embed into a new --out"
        )
    return set(store.ids())


def embed_modality(
    encoder: Encoder,
    modality: str,
    inputs: Inputs,
    out: str | os.PathLike,
    options: EmbedOptions | None = None,
    created_by: str | None = None,
    progress: ProgressFactory = silent,
) -> EmbedSummary:
    """Embed one modality of ``inputs`` into the store ``out`` (appending; resumes where it stopped)."""
    options = options or EmbedOptions()
    out = Path(out)
    rank, world = init_from_env()
    items = inputs.texts if modality == TEXT else inputs.images
    if not items:
        raise ModgapError(f"{inputs.source}: no {modality} items")
    lo, hi = rank_slice(len(items), rank, world)
    mine = items[lo:hi]
    target = out if world == 1 else out / RANK_DIR.format(rank=rank)
    done = _existing_ids(out, encoder, modality, options)
    if target != out:
        done |= _existing_ids(target, encoder, modality, options)
    todo = [(i, k, v) for i, (k, v) in enumerate(mine) if k not in done]
    t0 = time.perf_counter()
    failures: list[dict[str, str]] = []
    dim = encoder.dim
    meta_col = "text" if modality == TEXT else "image_path"
    writer = StoreWriter(
        target,
        dim=dim,
        dtype=options.dtype,
        normalized=encoder.normalized_output,
        modality=modality,
        encoder=encoder.describe(),
        created_by=created_by,
        metadata_columns=[meta_col],
        shard_rows=options.shard_rows,
    )
    embedded = 0
    with writer, progress(f"embed {modality}" + (f" [rank {rank}]" if world > 1 else ""), len(todo)) as advance:
        if modality == TEXT:
            embedded = _embed_texts(encoder, todo, writer, options, failures, advance)
        else:
            embedded = _embed_images(encoder, todo, inputs, writer, options, failures, advance)
    _write_failures(target, failures)
    if world > 1:
        barrier()
        if rank == 0:
            merge_sub_stores(out, [out / RANK_DIR.format(rank=r) for r in range(world)], concat=[FAILURES])
        barrier()
    return EmbedSummary(modality, str(out), embedded, len(mine) - len(todo), len(failures), time.perf_counter() - t0)


def _embed_texts(
    encoder: Encoder,
    todo: list,
    writer: StoreWriter,
    options: EmbedOptions,
    failures: list[dict[str, str]],
    advance: Callable[[int], None],
) -> int:
    keep = []
    for _, k, text in todo:
        if text.strip():
            keep.append((k, text))
        else:
            failures.append({"id": k, "path": "", "reason": "empty text"})
    advance(len(todo) - len(keep))
    if not keep:
        return 0
    texts = [t for _, t in keep]
    batches = bucketed_batches([len(t) for t in texts], options.batch_size, options.window_batches)
    loader = DataLoader(
        _TextBatches(texts, batches, encoder.text_preprocessor()),
        batch_size=None,
        num_workers=options.num_workers,
        persistent_workers=False,
    )
    span = options.batch_size * options.window_batches
    window: dict[int, torch.Tensor] = {}
    written = 0
    for idx, prepared in loader:
        vectors = encoder.embed(TEXT, prepared)
        for j, i in enumerate(idx):
            window[i] = vectors[j]
        advance(len(idx))
        # A window is complete when all its rows are back: write it in input order.
        w_end = min((written // span + 1) * span, len(keep))
        if len(window) == w_end - written:
            order = list(range(written, w_end))
            writer.write(
                [keep[i][0] for i in order],
                torch.stack([window[i] for i in order]),
                {"text": [keep[i][1] for i in order]},
            )
            window.clear()
            written = w_end
    return written


def _embed_images(
    encoder: Encoder,
    todo: list,
    inputs: Inputs,
    writer: StoreWriter,
    options: EmbedOptions,
    failures: list[dict[str, str]],
    advance: Callable[[int], None],
) -> int:
    items = [(k, v) for _, k, v in todo]
    prep, whole = encoder.image_preprocessor(), encoder.prepares_image_batches
    dataset = _ImageItems(items, prep, inputs.dataset, inputs.image_column, whole_batches=whole)
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=_CollateWholeBatch(prep) if whole else _collate_images,
        shuffle=False,
    )
    written = 0
    for idx, batch, failed in loader:
        for i, reason in failed:
            k, src = items[i]
            failures.append({"id": k, "path": "" if inputs.dataset is not None else str(src), "reason": reason})
        if idx:
            vectors = encoder.embed(IMAGE, batch)
            paths = [None if inputs.dataset is not None else str(items[i][1]) for i in idx]
            writer.write([items[i][0] for i in idx], vectors, {"image_path": paths})
            written += len(idx)
        advance(len(idx) + len(failed))
    return written


def _write_failures(store_dir: Path, failures: list[dict[str, str]]) -> None:
    """Replace the list of failures with this run's (earlier failures were retried in this run)."""
    write_jsonl(store_dir / FAILURES, failures)


def embed_data(
    encoder_spec: str,
    data: str | os.PathLike,
    outs: dict[str, str | os.PathLike | None],
    *,
    image_root: str | os.PathLike | None = None,
    columns: Columns | None = None,
    options: EmbedOptions | None = None,
    device: str = "cpu",
    online: bool = False,
    trust_remote_code: bool = False,
    max_text_length: int | None = None,
    templates: str | os.PathLike | None = None,
    features: str = "global",
    created_by: str | None = None,
    progress: ProgressFactory = silent,
) -> list[EmbedSummary]:
    """``modgap embed``: read ``data``, load the encoder, and embed each modality named in ``outs``
    (``{"image": STORE, "text": STORE}``) into its store. Offline unless ``online``; under torchrun each
    process uses its own GPU for ``device="cuda"``. ``features="patch"`` stores each image's patch tokens
    (:class:`~modgap.encoders.patches.PatchFeatures`) instead of its global embedding."""
    from modgap.encoders import load_encoder
    from modgap.encoders.patches import FEATURES, PatchFeatures

    use_offline_mode(online)
    wanted = [m for m in (IMAGE, TEXT) if m in outs]
    if not wanted or set(outs) - {IMAGE, TEXT}:
        raise ModgapError(f"embed: modalities must be image and/or text, got {sorted(outs)}")
    for m in wanted:
        if outs[m] is None:
            raise ModgapError(f"--out-{m} is required to embed {m}s")
    if features not in FEATURES:
        raise ModgapError(f"--features must be one of {FEATURES}, got {features!r}")
    if features == "patch" and TEXT in wanted:
        raise ModgapError("--features patch is for images (--modality image); texts have global embeddings only")
    inputs = read_inputs(data, image_root, columns or Columns())
    for m in wanted:  # every modality is checked before any is embedded: no finished store, then an error
        if not (inputs.texts if m == TEXT else inputs.images):
            raise ModgapError(f"{inputs.source}: no {m} items (nothing embedded)")
    if len(wanted) == 2 and Path(outs[IMAGE]).resolve() == Path(outs[TEXT]).resolve():  # type: ignore[arg-type]
        raise ModgapError(f"--out-image and --out-text name the same store ({outs[IMAGE]})")
    init_from_env()
    encoder = load_encoder(
        encoder_spec,
        device=local_device(device),
        online=online,
        trust_remote_code=trust_remote_code,
        max_text_length=max_text_length,
        templates=templates,
    )
    if features == "patch":
        encoder = PatchFeatures(encoder)
    return [
        embed_modality(encoder, m, inputs, outs[m], options, created_by=created_by, progress=progress) for m in wanted
    ]


def embed_once(
    encoder: Callable[[], Encoder],
    modality: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: EmbedOptions | None = None,
    text_column: str = "caption",
    id_column: str = "id",
    created_by: str | None = None,
    progress: ProgressFactory = silent,
) -> EmbedSummary | None:
    """Embed one modality of ``data`` into ``out`` unless the store is finished (its ``done`` marker), for
    pipelines that skip finished steps (the demo, ``synth run``); the summary, or None when there was nothing
    to do. ``encoder`` loads the encoder, called only when there is work. A run stopped midway resumes as
    :func:`embed_modality` does."""
    out = Path(out)
    if (out / "done").is_file():
        return None
    inputs = read_inputs(data, columns=Columns(id=id_column, text=text_column))
    summary = embed_modality(encoder(), modality, inputs, out, options, created_by=created_by, progress=progress)
    write_text(out / "done", "")
    return summary
