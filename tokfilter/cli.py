"""The ``tokfilter`` command: one subcommand per job.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and
``main(args) -> int``. Modules are imported only when their subcommand runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tokfilter.errors import TokfilterError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build-corpus": ("tokfilter.training.corpus.build", "build the seeded demo corpus with weak labels"),
    "label": ("tokfilter.training.corpus.label", "weak labels for your own corpus, in the corpus format train-classifier reads"),
    "train-classifier": ("tokfilter.training.classifier.train", "train, calibrate and export a classifier to ONNX"),
    "eval-classifier": ("tokfilter.training.classifier.evaluate", "evaluate the exported classifiers on the test split"),
    "check-engine": ("tokfilter.training.classifier.check_engine", "parity of an engine/precision with ONNX Runtime fp32 (token F1, max prob difference)"),
    "model-repo": ("tokfilter.server.model_repo", "place the exported models into the Triton model repository"),
    "serve": ("tokfilter.server.serve", "start Triton and the REST gateway"),
    "train-tokenizer": ("tokfilter.training.pretrain.tokenizer", "train the BPE tokenizer used for pretraining"),
    "filter": ("tokfilter.clients.filter_cli", "stream a corpus through the filter and write masked shards"),
    "inspect": ("tokfilter.clients.shards.inspect", "show shard documents in the training tokens, masked tokens marked"),
    "export": ("tokfilter.clients.export.cli", "write masked shards in a trainer's format: olmo-core, megatron, hf, mds"),
    "pretrain": ("tokfilter.training.pretrain.train", "masked pretraining of a small GPT on shards"),
    "evaluate": ("tokfilter.training.pretrain.evaluate", "held-out losses, multiple choice and adversarial fine-tuning"),
    "experiment": ("tokfilter.training.experiments.run", "run a grid of pretraining runs and write a report"),
    "demo": ("tokfilter.demo", "build what is missing and run the system end to end"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokfilter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = build_parser()
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints help or an "invalid choice" error and exits
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"tokfilter {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except TokfilterError as err:
        print(f"tokfilter {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokfilter {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
