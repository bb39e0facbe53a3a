"""Progress of long jobs in a log file: one line per refresh, never a silent bar."""

from tokfilter import progress
from tokfilter.progress import progress_bar


def test_a_bar_on_a_file_writes_whole_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    bar = progress_bar(True, total=4, unit="B", desc="filter")
    for n in range(1, 5):
        bar.n = n
        bar.set_postfix_str(f"{n} tokens/s", refresh=False)
        bar.update(0)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    assert lines[-1].startswith("filter: 100%") and "4/4" in lines[-1] and "4 tokens/s" in lines[-1]


def test_a_disabled_bar_is_silent(capsys):
    bar = progress_bar(False, total=4)
    bar.update(4)
    bar.close()
    assert capsys.readouterr().err == ""
