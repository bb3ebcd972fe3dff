"""`python -m rt1.demo --out DIR`: which directories it refuses, and that it never deletes a user's files.

Only the refusal and preparation paths run here (no stage runs: they are fast); `make demo` runs the whole.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from rt1.demo import DEMO_MARKER, DEMO_OUTPUTS, DemoError, main, prepare_output_dir


def test_a_non_empty_directory_that_is_no_demo_output_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "index").mkdir()  # even a name the demo would write
    (out / "index" / "data.csv").write_text("1,2")
    assert main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: ")
        and "not empty" in err
        and "--overwrite" in err
        and len(err.splitlines()) == 1
    )
    assert sorted(p.name for p in out.iterdir()) == ["index", "notes.txt"]
    assert (out / "index" / "data.csv").read_text() == "1,2" and not (out / DEMO_MARKER).exists()


def test_a_file_or_a_directory_holding_the_repository_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DemoError, match="not a directory"):
        prepare_output_dir(path)
    for out in (REPO, REPO.parent):
        with pytest.raises(DemoError, match="contains the repository"):
            prepare_output_dir(out, overwrite=True)


def test_new_or_empty_directories_are_used_and_marked(tmp_path):
    for out in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        assert prepare_output_dir(out) == out.resolve()
        assert [p.name for p in out.iterdir()] == [DEMO_MARKER]


def test_an_earlier_demo_output_is_reused_removing_only_the_demo_outputs(tmp_path):
    out = tmp_path / "demo_output"
    prepare_output_dir(out)
    for name in DEMO_OUTPUTS:
        (out / name).mkdir()
        (out / name / "old").write_text("stale")
    (out / "my_notes.txt").write_text("keep me")
    prepare_output_dir(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([DEMO_MARKER, "my_notes.txt"])
    assert (out / "my_notes.txt").read_text() == "keep me"


def test_overwrite_adds_the_demo_outputs_to_a_foreign_directory_and_deletes_nothing(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    prepare_output_dir(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([DEMO_MARKER, "notes.txt"])
    (out / DEMO_MARKER).unlink()
    (out / "plots").mkdir()  # the user's, though named like a demo output: refused, kept
    with pytest.raises(DemoError, match="plots.*not written by the demo"):
        prepare_output_dir(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "plots"]


def test_bad_counts_are_refused_before_any_output(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "rt1.demo", "--out", str(out), "--steps", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --steps must be at least 1, got 0"
    assert not out.exists()
