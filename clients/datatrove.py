"""A datatrove pipeline step that scores documents with tokfilter's classifiers.

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from tokfilter.clients.datatrove import TokfilterScorer

    LocalPipelineExecutor(pipeline=[JsonlReader("in/"), TokfilterScorer(), JsonlWriter("out/")], tasks=4).run()

By default the joint model (``artifacts/models/joint_classifier``) gives token and document
scores from one pass (``doc_model`` is then unused); a token model export pairs with ``doc_model``.
Each document gets, in ``metadata``: ``tokfilter_doc_score`` (the document score, or None without
a document model or head), ``tokfilter_flagged_fraction`` (the share of classifier tokens at
or above the threshold), ``tokfilter_spans`` (``[[start, end, score], ...]``, character offsets into
the text as read, the layout of Dolma's span attributes) and ``tokfilter_threshold``. With
``hide=True`` each span of the text is replaced by ``[hidden]`` (the offsets stay those of the
original). Models run in process (ONNX Runtime) or, with ``server="grpc://HOST:PORT"``, on a
tokfilter server; they are loaded in the task that runs the step, not where the pipeline is built,
so the step pickles small for Slurm and Ray executors.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from tokfilter import paths
from tokfilter.scoring import HIDDEN_TOKEN, ScoringPipeline, hide_spans

PREFIX = "tokfilter_"


class TokfilterScorer(PipelineStep):
    """Adds tokfilter's document score, flagged fraction and spans to each document's metadata."""

    name = "tokfilter scorer"
    type = "TAGGER"

    def __init__(
        self,
        token_model: Path | str = paths.JOINT_MODEL_DIR,
        doc_model: Path | str | None = paths.DOC_MODEL_DIR,
        server: str | None = None,
        threshold: float | None = None,
        hide: bool = False,
        batch_docs: int = 64,
        precision: str = "fp32",
        threads: int | None = None,
    ):
        super().__init__()
        if batch_docs < 1:
            raise ValueError(f"batch_docs must be >= 1, got {batch_docs}")
        self.token_model, self.doc_model, self.server = str(token_model), doc_model and str(doc_model), server
        self.threshold, self.hide, self.batch_docs = threshold, hide, batch_docs
        self.precision, self.threads = precision, threads

    def scoring_pipeline(self) -> tuple[ScoringPipeline, object | None]:
        """The pipeline that scores, and the client to close after (with ``server``)."""
        if self.server:
            from tokfilter.clients.filter_client import FilterClient

            client = FilterClient(self.server, model_dir=self.token_model, use_doc_model=self.doc_model is not None)
            return client.pipeline, client
        from tokfilter.inference import OnnxWindowScorer

        pipeline = ScoringPipeline.from_model_dirs(
            self.token_model, self.doc_model,
            make_scorer=lambda d: OnnxWindowScorer(d, precision=self.precision, threads=self.threads))
        return pipeline, None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data is None:
            return
        pipeline, client = self.scoring_pipeline()
        threshold = pipeline.threshold if self.threshold is None else self.threshold
        data = iter(data)
        try:
            while batch := list(islice(data, self.batch_docs)):
                with self.track_time(unit="batch"):
                    scores = pipeline.score([doc.text for doc in batch], threshold)
                for doc, s in zip(batch, scores):
                    doc.metadata[PREFIX + "doc_score"] = s.doc_score
                    doc.metadata[PREFIX + "flagged_fraction"] = s.flagged_fraction
                    doc.metadata[PREFIX + "spans"] = [[span.start, span.end, span.score] for span in s.spans]
                    doc.metadata[PREFIX + "threshold"] = threshold
                    if self.hide and s.spans:
                        doc.text = hide_spans(doc.text, s.spans, HIDDEN_TOKEN)
                    self.stat_update("flagged_docs" if s.spans else "clean_docs")
                    self.stat_update("flagged_spans", value=len(s.spans))
                    self.update_doc_stats(doc)
                    yield doc
        finally:
            if client is not None:
                client.close()
