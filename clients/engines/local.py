"""Streaming a corpus through the filter into masked shards: the steps both engines share.

Per buffer of documents (``buffer_docs`` records, in input order): score with the shared
``ScoringPipeline`` (which tokenizes, windows, batches by a token budget sorted by length and
restores the order), project the character probabilities onto the target tokenizer, append to the
open shard. Shards close only between buffers, and the manifest records how far each input was
read, so ``--resume`` after a kill continues at the last shard with identical buffers and identical
bytes.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from tokfilter import paths
from tokfilter.clients.export.dolma import DolmaAttributesWriter, attributes_row
from tokfilter.clients.filter_client import DEFAULT_RETRY_DEADLINE_S, DOC_MODEL, TOKEN_MODEL, FilterClient
from tokfilter.clients.projection import TargetTokenizer, project_batch
from tokfilter.clients.readers import STDIN, Record, check_inputs, iter_records
from tokfilter.clients.shards.writer import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ShardWriter,
    read_manifest,
    remove_unlisted_shards,
    token_dtype,
)
from tokfilter.engines import ENGINES, make_window_scorer, resolve_engine
from tokfilter.errors import TokfilterError
from tokfilter.identity import identity_difference, model_identity
from tokfilter.inference import file_precision
from tokfilter.modelcard import load_model_card
from tokfilter.progress import progress_bar
from tokfilter.scoring import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_REQUEST_TOKENS, ScoringPipeline

ON_ERROR = ("skip", "fail")


@dataclass(frozen=True)
class FilterSettings:
    """Everything that decides the bytes of the shards (checked again on ``--resume``), plus
    ``server``/``max_in_flight``/``threads``, which only decide where and how fast models run."""

    token_model: str = str(paths.JOINT_MODEL_DIR)  # a joint model scores documents too; doc_model is then unused
    doc_model: str = str(paths.DOC_MODEL_DIR)
    target_tokenizer: str = str(paths.TARGET_TOKENIZER)
    threshold: float | None = None  # None: the token model card's threshold
    doc_prefilter: float | None = None
    precision: str | None = None  # None: the runtime's default in process; with a server, whatever it serves
    runtime: str = "auto"  # in process: auto|onnxruntime|openvino|torch (tokfilter.engines)
    text_field: str = "text"
    id_field: str = "id"
    on_error: str = "skip"
    buffer_docs: int = 256
    shard_tokens: int = 1 << 22
    max_batch_tokens: int | None = None  # None: batch_tokens()'s default
    server: str | None = None
    max_in_flight: int = 4
    threads: int | None = None
    api_key: str | None = field(default=None, repr=False)  # of the server
    retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S
    dolma_attributes: str | None = None  # also write Dolma attributes of this name (clients/export/dolma.py)

    def validate(self) -> None:
        if self.runtime not in ENGINES:
            raise TokfilterError(f"--runtime must be one of {ENGINES}, got {self.runtime!r}")
        if self.on_error not in ON_ERROR:
            raise TokfilterError(f"--on-error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.buffer_docs < 1:
            raise TokfilterError(f"--buffer-docs must be >= 1, got {self.buffer_docs}")
        if self.max_in_flight < 1:
            raise TokfilterError(f"--max-in-flight must be >= 1, got {self.max_in_flight}")
        if self.retry_deadline_s < 0:
            raise TokfilterError(f"--retry-deadline must be >= 0, got {self.retry_deadline_s}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise TokfilterError(f"--max-batch-tokens must be >= 1, got {self.max_batch_tokens}")
        if self.doc_prefilter is not None and not 0.0 <= self.doc_prefilter <= 1.0:
            raise TokfilterError(f"--doc-prefilter must be in [0, 1], got {self.doc_prefilter}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise TokfilterError(f"--threshold must be in [0, 1], got {self.threshold}")

    def batch_tokens(self, remote: bool) -> int:
        """Padded tokens per model call in process, or per request to a server (which regroups
        them into model calls of its own)."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return DEFAULT_REQUEST_TOKENS if remote else DEFAULT_MAX_BATCH_TOKENS

    def identity(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        keys = ("text_field", "id_field", "on_error", "buffer_docs", "shard_tokens", "max_batch_tokens", "doc_prefilter")
        return {k: asdict(self)[k] for k in keys}


@dataclass(frozen=True)
class FilteredDoc:
    """A document on the target tokenizer: ids, filter probability per id, document score, its
    length in classifier tokens, and whether the cascade skipped the token model for it; and, on
    its text, the flagged character spans ``(start, end, score)`` and classifier-token share."""

    ids: np.ndarray
    probs: np.ndarray
    doc_score: float
    classifier_tokens: int
    prefiltered: bool
    spans: tuple = ()
    flagged_fraction: float = 0.0


MODEL_KEYS = {"token_model": TOKEN_MODEL, "doc_model": DOC_MODEL}  # manifest key -> served model


def local_model_dirs(settings: FilterSettings) -> dict[str, str]:
    """The export behind each manifest key in process: a joint token model is its own document model."""
    joint = load_model_card(settings.token_model).joint
    return {"token_model": settings.token_model, "doc_model": settings.token_model if joint else settings.doc_model}


def scoring_models(settings: FilterSettings) -> dict:
    """What scores the corpus, as both engines record it in the manifest and ``--resume`` compares
    it: the token threshold and the identity (``tokfilter.identity``) of the token and document
    models (the same identity twice for a joint model). With ``--server``, the identity each
    endpoint publishes for the files it loaded (every endpoint must serve the same models); in
    process, that of the local exports, and ``runs_on``: the engine and precision that run each
    (``auto`` resolved once here, so every worker of the run runs the same). A joint model refuses
    ``--doc-prefilter``: its document score comes out of the full pass, so a cascade would skip
    nothing."""
    if settings.server:
        urls = settings.server.split(",")
        models = served_models(settings, urls[0])[1]
        for url in urls[1:]:
            check_same_models(models, served_models(settings, url)[1], f"--server: {url} serves another {{key}} than {urls[0]}")
    else:
        models = {}
        for key, path in local_model_dirs(settings).items():
            choice = resolve_engine(path, settings.runtime, settings.precision)
            models[key] = model_identity(path, file_precision(choice.precision)) | {"runs_on": f"{choice.engine} {choice.precision}"}
            print(f"[filter] {key}: {choice.engine} {choice.precision} ({choice.reason})", file=sys.stderr, flush=True)
    if settings.doc_prefilter is not None and models["token_model"] == models["doc_model"]:
        raise TokfilterError(f"--doc-prefilter needs a separate, cheaper document model: {models['token_model']['model_name']} is a "
                             "joint model, whose document score comes out of the same pass as its token scores, so the cascade "
                             "would skip nothing; leave --doc-prefilter out")
    threshold = models["token_model"]["threshold"] if settings.threshold is None else settings.threshold
    return {"threshold": threshold, **models}


def served_models(settings: FilterSettings, url: str) -> tuple[FilterClient, dict]:
    """A client of ``url`` (its own thread pool closed: callers schedule its scorers) and the
    identities it publishes for the token and the document model (a joint model's twice)."""
    client = FilterClient(url, settings.token_model, max_in_flight=1, api_key=settings.api_key,
                          retry_deadline_s=settings.retry_deadline_s)
    client.close()
    if not client.joint and DOC_MODEL not in client.identities:
        raise TokfilterError(f"server {url} does not serve the document model {DOC_MODEL!r}")
    models = {key: client.identities[TOKEN_MODEL if client.joint else model] for key, model in MODEL_KEYS.items()}
    for key, identity in models.items():
        if settings.precision not in (None, identity["precision"]) and identity["precision"] is not None:
            raise TokfilterError(f"--precision {settings.precision}: {url} serves {key} at {identity['precision']} "
                                 f"(serve it with `tokfilter serve --precision {settings.precision}`, or leave --precision out)")
    return client, models


def check_same_models(expected: dict, found: dict, message: str) -> None:
    """Raise ``message`` (``{key}`` filled in) with the first identity field that differs."""
    for key in MODEL_KEYS:
        difference = identity_difference(expected[key], found[key])
        if difference:
            raise TokfilterError(f"{message.format(key=key)} ({difference})")


class ChunkFilter:
    """Tokenize, infer, project one buffer of texts: the per-document work of every engine.

    Models run in process (ONNX Runtime) or, with ``server``, on Triton through ``FilterClient``'s
    window scorers, with at most ``max_in_flight`` requests in flight; they retry what a healing
    server fails for up to ``retry_deadline_s``, so a run rides out a server restart. ``models``
    (``scoring_models``) is what the run records; models that differ from it are refused (a server
    restarted with another model, a node holding another copy of an export)."""

    def __init__(self, settings: FilterSettings, models: dict, server: str | None = None):
        self.settings = settings
        self.target = TargetTokenizer(settings.target_tokenizer)
        server = server or settings.server
        batch_tokens = settings.batch_tokens(remote=bool(server))
        if server:
            client, found = served_models(settings, server)
            check_same_models(models, found, f"server {server} serves another {{key}} than the one this run records")
            served = client.pipeline
            executor = ThreadPoolExecutor(settings.max_in_flight, thread_name_prefix="tokfilter-filter")
            self.pipeline = ScoringPipeline(
                served.tokenizer, served.token_model, served.threshold, served.doc_model,
                max_batch_tokens=batch_tokens, executor=executor,
            )
        else:
            dirs = local_model_dirs(settings)
            runs_on = {Path(dirs[key]): models[key]["runs_on"].split() for key in MODEL_KEYS}
            found = {key: model_identity(path, file_precision(runs_on[Path(path)][1])) for key, path in dirs.items()}
            check_same_models(models, found, "the local {key} differs from the one this run records")
            executor = None
            self.pipeline = ScoringPipeline.from_model_dirs(
                settings.token_model, settings.doc_model, max_batch_tokens=batch_tokens,
                make_scorer=lambda d: make_window_scorer(d, *runs_on[Path(d)], threads=settings.threads),
            )
        self.threshold = models["threshold"]
        self.token_only = ScoringPipeline(
            self.pipeline.tokenizer, self.pipeline.token_model, self.threshold,
            max_batch_tokens=batch_tokens, executor=executor,
        )

    def __call__(self, texts: list[str]) -> list[FilteredDoc]:
        if not texts:
            return []
        low = self.settings.doc_prefilter
        if low is None:
            scored = self.pipeline.score(texts, self.threshold)
            doc_scores = [s.doc_score for s in scored]
            by_doc = dict(enumerate(scored))
            lengths = {i: len(s.token_ids) for i, s in by_doc.items()}
        else:
            doc_scores = self.pipeline.score_documents(texts).tolist()
            kept = [i for i, s in enumerate(doc_scores) if s >= low]
            dropped = [i for i, s in enumerate(doc_scores) if s < low]
            by_doc = dict(zip(kept, self.token_only.score([texts[i] for i in kept], self.threshold)))
            encoded = self.token_only.encode([texts[i] for i in dropped])
            lengths = {i: len(e.ids) for i, e in zip(dropped, encoded)} | {i: len(s.token_ids) for i, s in by_doc.items()}
        encodings = self.target.encode(texts)
        scored = sorted(by_doc)
        projected = dict(zip(scored, project_batch([by_doc[i].char_probs for i in scored], [encodings[i] for i in scored])))
        out = []
        for i, enc in enumerate(encodings):
            scores = by_doc.get(i)
            if scores is None:
                out.append(FilteredDoc(enc.ids, np.zeros(len(enc.ids), np.float32), float(doc_scores[i]), lengths[i], True))
                continue
            spans = tuple((s.start, s.end, s.score) for s in scores.spans)
            out.append(FilteredDoc(enc.ids, projected[i], float(doc_scores[i]), lengths[i], False, spans,
                                   scores.flagged_fraction))
        return out


def chunked(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    it = iter(records)
    while chunk := list(islice(it, size)):
        yield chunk


class InputProgress:
    """Progress over all inputs in bytes on disk, with documents/s and tokens/s (tqdm on stderr)."""

    def __init__(self, inputs: list[str], enabled: bool):
        sizes = [0 if p == STDIN else Path(p).stat().st_size for p in inputs]
        self.done_before = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.positions = [[0] for _ in inputs]
        self.bar = progress_bar(enabled, total=sum(sizes) or None, unit="B", unit_scale=True, desc="filter")
        self.start, self.docs, self.tokens = time.perf_counter(), 0, 0

    def update(self, input_index: int, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.n = self.done_before[input_index] + self.positions[input_index][0]
        self.bar.set_postfix_str(f"{self.docs / elapsed:.1f} docs/s, {self.tokens / elapsed:,.0f} tokens/s", refresh=False)
        self.bar.update(0)  # shown when the bar's interval has passed

    def close(self) -> None:
        self.bar.close()


def prepare_output(inputs: list[str], out_dir: Path, settings: FilterSettings, target: TargetTokenizer,
                   models: dict, resume: bool) -> dict:
    """A fresh manifest recording ``models`` (``scoring_models``), or the one of the run being
    resumed (checked to use the same settings and models)."""
    check_inputs(inputs)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "dtype": token_dtype(target.vocab_size).name, "eot_id": target.eot_id, "hidden_id": target.hidden_id,
        "threshold": models["threshold"],
        "settings": settings.identity(),
        "target_tokenizer": target.metadata(),
        "token_model": models["token_model"],
        "doc_model": models["doc_model"],
        "inputs": [{"path": p, "records_read": 0, "done": False} for p in inputs],
        "shards": [], "counts": {}, "complete": False,
    }
    if not (out_dir / MANIFEST).exists():
        return manifest
    if not resume:
        raise TokfilterError(f"--out {out_dir} already holds shards ({MANIFEST}); pass --resume to continue, or choose an empty directory")
    if settings.dolma_attributes:
        raise TokfilterError("--resume cannot continue --dolma-attributes files (they are written whole): rerun into an empty --out")
    if STDIN in inputs:
        raise TokfilterError("--resume cannot continue reading stdin ('-'): give files")
    old = read_manifest(out_dir)
    for key in ("dtype", "eot_id", "hidden_id", "threshold", "settings", "target_tokenizer"):
        if old.get(key) != manifest[key]:
            raise TokfilterError(f"--resume: {key} differs from the run in {out_dir} ({old.get(key)} != {manifest[key]})")
    check_same_models({key: old.get(key) or {} for key in MODEL_KEYS}, manifest,
                      f"--resume: {{key}} differs from the one that scored the run in {out_dir}; resume with that model")
    for key in MODEL_KEYS:
        ran, runs = (old.get(key) or {}).get("runs_on"), manifest[key].get("runs_on")
        if ran is not None and ran != runs:
            raise TokfilterError(f"--resume: the run in {out_dir} scored {key} on {ran}, this one would run {runs}: "
                                 f"pass --runtime {ran.split()[0]} --precision {ran.split()[1]}")
    if [i["path"] for i in old["inputs"]] != inputs:
        raise TokfilterError(f"--resume: INPUT must be the same files as the run in {out_dir}: {[i['path'] for i in old['inputs']]}")
    remove_unlisted_shards(out_dir, old)
    return old


def write_filtered(writer: ShardWriter, chunk: list[Record], docs: list[FilteredDoc], on_error: str) -> int:
    """Append a buffer's documents to the writer; returns the target tokens written."""
    good = [r for r in chunk if r.error is None]
    for r in chunk:
        if r.error is not None:
            if on_error == "fail":
                raise TokfilterError(f"{r.error} (--on-error fail; use --on-error skip to skip such records)")
            print(f"skipped {r.error}", file=sys.stderr)
            writer.count("skipped")
    tokens = 0
    for r, d in zip(good, docs, strict=True):
        writer.add(r.doc_id, d.ids, d.probs, d.doc_score)
        writer.count("classifier_tokens", d.classifier_tokens)
        writer.count("token_model_tokens", 0 if d.prefiltered else d.classifier_tokens)
        writer.count("prefiltered_docs", int(d.prefiltered))
        tokens += len(d.ids)
    for r in chunk:
        writer.advance(r.input_index, r.position)
    writer.flush_if_full()
    return tokens


def write_attributes(attributes: DolmaAttributesWriter, chunk: list[Record], docs: list[FilteredDoc]) -> None:
    """A buffer's rows of Dolma attributes, one per record (an empty one for a malformed record)."""
    good = iter(docs)
    for r in chunk:
        if r.error is not None:
            attributes.write(r.input_index, {"id": r.doc_id, "attributes": {}})
            continue
        d = next(good)
        attributes.write(r.input_index, attributes_row(r.doc_id, attributes.name, len(r.text), d.spans, d.doc_score,
                                                       d.flagged_fraction))


def input_records(manifest: dict, settings: FilterSettings, progress: InputProgress | None) -> Iterator[Record]:
    """Records of all inputs, each from where the manifest says the last run stopped."""
    for i, entry in enumerate(manifest["inputs"]):
        yield from iter_records(entry["path"], i, settings.text_field, settings.id_field, skip=entry["records_read"],
                                progress=progress.positions[i] if progress else None)


def run_local(inputs: list[str], out_dir: Path, settings: FilterSettings, resume: bool = False,
              show_progress: bool = True) -> dict:
    """Filter ``inputs`` into shards in ``out_dir`` in this process; returns the final manifest."""
    settings.validate()
    out_dir = Path(out_dir)
    if settings.server and "," in settings.server:
        raise TokfilterError("--server: the local engine takes one endpoint; use --engine ray for several")
    models = scoring_models(settings)
    chunk_filter = ChunkFilter(settings, models)
    manifest = prepare_output(inputs, out_dir, settings, chunk_filter.target, models, resume)
    if manifest["complete"]:
        return manifest
    return write_run(inputs, out_dir, manifest, settings, show_progress,
                     lambda buffers: ((chunk, chunk_filter(buffer_texts(chunk))) for chunk in buffers))


def buffer_texts(chunk: list[Record]) -> list[str]:
    """The texts of a buffer's well-formed records (malformed ones are counted, not scored)."""
    return [r.text for r in chunk if r.error is None]


def write_run(inputs: list[str], out_dir: Path, manifest: dict, settings: FilterSettings, show_progress: bool,
              filter_buffers: Callable[[Iterator[list[Record]]], Iterator[tuple[list[Record], list[FilteredDoc]]]]) -> dict:
    """Read the inputs into buffers, have ``filter_buffers`` filter them (yielding in input order,
    any engine), write shards; returns the final manifest."""
    writer = ShardWriter(out_dir, manifest, settings.shard_tokens)
    attributes = DolmaAttributesWriter(inputs, settings.dolma_attributes) if settings.dolma_attributes else None
    progress = InputProgress(inputs, show_progress)
    try:
        buffers = chunked(input_records(manifest, settings, progress), settings.buffer_docs)
        for chunk, docs in filter_buffers(buffers):
            tokens = write_filtered(writer, chunk, docs, settings.on_error)
            if attributes is not None:
                write_attributes(attributes, chunk, docs)
            progress.update(chunk[-1].input_index, len(docs), tokens)
    finally:
        progress.close()
        if attributes is not None:
            attributes.close()
    for entry in manifest["inputs"]:
        entry["done"] = True
    writer.close()
    return manifest
