"""`tokfilter build-corpus` through the real CLI dispatcher: summary on success, exit 2 on bad input."""

from __future__ import annotations

from tokfilter.cli import main


def test_build_corpus_prints_a_summary(tmp_path, capsys):
    assert main(["build-corpus", "--size", "tiny", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "docs" in out and "medicine token share" in out and "mixed docs" in out
    assert (tmp_path / "c" / "train.jsonl").is_file()


def test_unknown_size_exits_2_naming_the_field(tmp_path, capsys):
    assert main(["build-corpus", "--size", "huge", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "size" in err and "tiny" in err and "huge" in err


def test_unwritable_out_dir_exits_2_naming_it(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["build-corpus", "--size", "tiny", "--out", str(blocker / "corpus")]) == 2
    assert "out_dir" in capsys.readouterr().err


def test_label_noise_out_of_range_exits_2(tmp_path, capsys):
    assert main(["build-corpus", "--size", "tiny", "--label-noise", "1.5", "--out", str(tmp_path)]) == 2
    assert "label_noise" in capsys.readouterr().err
