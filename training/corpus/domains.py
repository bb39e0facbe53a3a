"""The corpus's domains, named once: the forget domain the classifiers flag, the nearest domain that
must be kept, general text, and the mixed documents that hold forget passages in other text."""

FORGET = "medicine"
RETAIN = "biology"
GENERAL = "general"
MIXED = "mixed"
PASSAGE_DOMAINS = (FORGET, RETAIN, GENERAL)  # what a passage (a pure document) is about
DOCUMENT_DOMAINS = (GENERAL, RETAIN, FORGET, MIXED)  # a document's domain in the corpus manifest
