import pytest

from crosssite.errors import CrossSiteError, CrossSiteWarning
from crosssite.io import append_jsonl, atomic_write_text, read_jsonl


def test_torn_last_line_is_dropped_but_a_bad_middle_line_is_an_error(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"epoch": 1})
    append_jsonl(log, {"epoch": 2})
    with open(log, "a") as f:
        f.write('{"epoch": 3, "lo')
    with pytest.warns(CrossSiteWarning, match="torn"):
        assert read_jsonl(log) == [{"epoch": 1}, {"epoch": 2}]
    log.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(CrossSiteError, match="line 2"):
        read_jsonl(log)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
