"""Bad input to train-classifier / eval-classifier: a clear message naming the problem, exit 2."""

import pytest

from tokfilter.cli import main as cli_main


def run(argv, capsys):
    rc = cli_main(argv)
    return rc, capsys.readouterr().err


def test_missing_corpus_file(tmp_path, capsys):
    rc, err = run(["train-classifier", "--task", "token", "--corpus", str(tmp_path / "nowhere")], capsys)
    assert rc == 2
    assert "not found" in err and "train.jsonl" in err


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "validation.jsonl").write_text("\n")
    rc, err = run(["train-classifier", "--task", "document", "--corpus", str(tmp_path)], capsys)
    assert rc == 2
    assert "is empty" in err and "train.jsonl" in err


def test_malformed_document(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text('{"id": "a", "text": 3, "meta": {}}\n')
    rc, err = run(["train-classifier", "--task", "token", "--corpus", str(tmp_path)], capsys)
    assert rc == 2
    assert "train.jsonl" in err and "document 1" in err and "'text'" in err


@pytest.mark.parametrize(
    "flag, value, field",
    [("--layers", "9", "--layers"), ("--stride", "300", "--stride"), ("--label-noise", "0.7", "--label-noise"),
     ("--max-steps", "0", "--max-steps")],
)
def test_out_of_range_settings_name_the_field(tiny_corpus_dir, tmp_path, capsys, flag, value, field):
    rc, err = run(["train-classifier", "--task", "token", "--corpus", str(tiny_corpus_dir), "--out", str(tmp_path), flag, value], capsys)
    assert rc == 2
    assert field in err


def test_unknown_precision_names_the_choices(tiny_corpus_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train-classifier", "--task", "joint", "--corpus", str(tiny_corpus_dir), "--out", str(tmp_path), "--precision", "fp8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "bf16" in err


def test_eval_without_models(tiny_corpus_dir, tmp_path, capsys):
    rc, err = run(["eval-classifier", "--corpus", str(tiny_corpus_dir), "--token-model", str(tmp_path / "none"),
                   "--doc-model", str(tmp_path / "none")], capsys)
    assert rc == 2
    assert "model card not found" in err


def test_eval_max_docs_must_be_positive(tiny_corpus_dir, capsys):
    rc, err = run(["eval-classifier", "--corpus", str(tiny_corpus_dir), "--max-docs", "0"], capsys)
    assert rc == 2
    assert "--max-docs" in err


def test_init_must_be_a_classifier_of_the_task_and_depth(tiny_corpus_dir, tiny_models_dir, tmp_path, capsys):
    base = ["train-classifier", "--corpus", str(tiny_corpus_dir), "--out", str(tmp_path), "--init"]
    rc, err = run([*base, str(tiny_models_dir / "doc_classifier"), "--task", "token", "--layers", "1"], capsys)
    assert rc == 2 and "is a document model; --task token fine-tunes a token model" in err
    rc, err = run([*base, str(tiny_models_dir / "token_classifier"), "--task", "token", "--layers", "3"], capsys)
    assert rc == 2 and "has 1 encoder layers; pass --layers 1" in err
    rc, err = run([*base, str(tmp_path / "absent"), "--task", "token"], capsys)
    assert rc == 2 and "model card not found" in err
