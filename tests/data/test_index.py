"""Stage 3: data_emerge.py (rt1.data.index): windows, the episode split, determinism, errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from rt1.data.index import (
    WindowIndexError,
    build_index,
    index_episodes,
    main,
    read_index,
)
from rt1.data.preprocess import preprocess_dir

try:
    from tests.synthetic_segments import DEFAULT_LAYOUT, NOT_PICK, PICK, write_synthetic_segments
except ImportError:
    from synthetic_segments import DEFAULT_LAYOUT, NOT_PICK, PICK, write_synthetic_segments

REPO = Path(__file__).resolve().parents[2]
INSTRUCTIONS = PICK + NOT_PICK
# 6 files, 30 episodes of 1..20 steps (some shorter than the window).
BIG_LAYOUT = [
    [(1 + (7 * (f * 5 + e)) % 20, INSTRUCTIONS[(f + e) % len(INSTRUCTIONS)]) for e in range(5)]
    for f in range(6)
]


def preprocessed(tmp_path_factory, name, layout):
    seg = tmp_path_factory.mktemp(f"{name}_seg")
    write_synthetic_segments(seg, layout)
    out = tmp_path_factory.mktemp(f"{name}_pre")
    preprocess_dir(seg, out, workers=1, image_size=32, progress=False)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return preprocessed(tmp_path_factory, "big", BIG_LAYOUT)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return preprocessed(tmp_path_factory, "small", DEFAULT_LAYOUT)


def episodes_of(data_dir: Path) -> dict[tuple[str, int], dict]:
    """(file, row) -> episode facts, read straight from the files."""
    out = {}
    for path in sorted(data_dir.glob("*.h5")):
        with h5py.File(path) as f:
            for row, (src, start, n) in enumerate(
                zip(f["episodes/source_index"][:], f["episodes/step_start"][:], f["episodes/num_steps"][:])
            ):
                out[(path.name, row)] = {"source_index": int(src), "start": int(start), "n": int(n)}
    return out


def rows(csv: Path) -> list[tuple[int, str]]:
    lines = csv.read_text().splitlines()
    assert lines[0] == "start_index,file"
    return [(int(a), b) for a, b in (line.split(",") for line in lines[1:])]


def episode_of_window(episodes, file, start, window=6):
    """The episode a window lies in; fails the test if it crosses an episode boundary."""
    for (name, row), ep in episodes.items():
        if name == file and ep["start"] <= start < ep["start"] + ep["n"]:
            assert start + window <= ep["start"] + ep["n"], (
                f"window {file}:{start} crosses the end of episode {row}"
            )
            return (name, row)
    raise AssertionError(f"window {file}:{start} is outside every episode")


def test_windows_stay_inside_episodes_and_count_steps_minus_five(data, tmp_path):
    result = build_index(data, tmp_path, val_fraction=0.2, seed=0)
    episodes = episodes_of(data)
    per_episode = {key: 0 for key in episodes}
    for csv in (result.train_csv, result.val_csv):
        for start, file in rows(csv):
            per_episode[episode_of_window(episodes, file, start)] += 1
    for key, ep in episodes.items():
        assert per_episode[key] == max(0, ep["n"] - 5), key
    assert any(ep["n"] < 6 for ep in episodes.values())  # the layout has short episodes
    assert result.train_csv.name == f"train_idx_{len(rows(result.train_csv))}.csv"
    assert result.val_csv.name == f"val_idx_{len(rows(result.val_csv))}.csv"
    assert result.unused_episodes == sum(ep["n"] < 6 for ep in episodes.values())


def test_window_option(small, tmp_path):
    result = build_index(small, tmp_path, val_fraction=0.3, seed=0, window=4)
    total = len(rows(result.train_csv)) + len(rows(result.val_csv))
    assert total == sum(max(0, n - 3) for f in DEFAULT_LAYOUT for n, _ in f)
    assert json.loads(result.train_csv.with_suffix(".json").read_text())["window"] == 4


def test_train_and_val_share_no_episode(data, tmp_path):
    result = build_index(data, tmp_path, val_fraction=0.25, seed=3)
    episodes = episodes_of(data)
    train = {episode_of_window(episodes, f, s) for s, f in rows(result.train_csv)}
    val = {episode_of_window(episodes, f, s) for s, f in rows(result.val_csv)}
    assert train and val and not train & val
    assert not {episodes[k]["source_index"] for k in train} & {episodes[k]["source_index"] for k in val}
    usable = {k for k, ep in episodes.items() if ep["n"] >= 6}
    assert train | val == usable
    assert len(val) == round(0.25 * len(usable))


def test_same_seed_same_csvs_and_another_seed_another_split(data, tmp_path):
    a = build_index(data, tmp_path / "a", seed=7)
    b = build_index(data, tmp_path / "b", seed=7)
    c = build_index(data, tmp_path / "c", seed=8)
    assert a.train_csv.read_bytes() == b.train_csv.read_bytes()
    assert a.val_csv.read_bytes() == b.val_csv.read_bytes()
    assert {(s, f) for s, f in rows(a.val_csv)} != {(s, f) for s, f in rows(c.val_csv)}


def test_split_is_independent_of_listing_order(data, tmp_path, monkeypatch):
    a = build_index(data, tmp_path / "a", seed=1)
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(real_iterdir(self), reverse=True)))
    b = build_index(data, tmp_path / "b", seed=1)
    assert a.train_csv.read_bytes() == b.train_csv.read_bytes()
    assert a.val_csv.read_bytes() == b.val_csv.read_bytes()


def test_sidecar_records_the_build(data, tmp_path):
    result = build_index(data, tmp_path, val_fraction=0.2, seed=5)
    meta = json.loads(result.val_csv.with_suffix(".json").read_text())
    assert meta["window"] == 6 and meta["seed"] == 5 and meta["val_fraction"] == 0.2
    assert meta["split_unit"] == "episode" and meta["split"] == "val"
    assert [f["file"] for f in meta["files"]] == sorted(p.name for p in data.glob("*.h5"))
    assert len(meta["fingerprint"]) == 64
    assert meta["num_windows"] == len(rows(result.val_csv))
    listed = index_episodes(result.val_csv)
    assert sum(e.num_windows for e in listed) == meta["num_windows"]
    assert all(e.split == "val" and e.num_steps >= 6 for e in listed)
    index = read_index(result.train_csv)
    assert len(index) == result.train_windows and index.meta["split"] == "train"


def test_rebuilding_replaces_the_previous_index(data, tmp_path):
    build_index(data, tmp_path, seed=0)
    build_index(data, tmp_path, seed=1)
    assert len(list(tmp_path.glob("train_idx_*.csv"))) == 1
    assert len(list(tmp_path.glob("val_idx_*.csv"))) == 1
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_edited_csv_is_detected(data, tmp_path):
    result = build_index(data, tmp_path)
    lines = result.train_csv.read_text().splitlines()
    result.train_csv.write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(WindowIndexError, match="edited or truncated"):
        read_index(result.train_csv)


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_val_fraction_out_of_range(data, tmp_path, fraction):
    with pytest.raises(WindowIndexError, match=r"must be in \[0, 1\)"):
        build_index(data, tmp_path, val_fraction=fraction)


def test_val_fraction_zero_puts_every_episode_in_train_and_writes_no_val_files(data, tmp_path):
    split = build_index(data, tmp_path / "split", val_fraction=0.2, seed=0)
    result = build_index(data, tmp_path / "split", val_fraction=0.0, seed=0)  # replaces the previous index
    assert result.val_csv is None and result.val_windows == 0 and result.val_episodes == 0
    assert result.train_windows == split.train_windows + split.val_windows
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == sorted(
        [result.train_csv.name, result.train_csv.with_suffix(".json").name]
    )
    assert len(rows(result.train_csv)) == result.train_windows
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "data_emerge.py"),
            "--data-dir",
            str(data),
            "--out-dir",
            str(tmp_path / "cli"),
            "--val-fraction",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "val:   none" in proc.stdout and not list((tmp_path / "cli").glob("val_idx_*"))


def test_data_emerge_writes_next_to_the_data_by_default_never_into_the_current_directory(small, tmp_path):
    data = tmp_path / "pre"
    shutil.copytree(small, data)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, str(REPO / "data_emerge.py"), "--data-dir", str(data)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(cwd.iterdir()) == []
    assert len(list(data.glob("train_idx_*.csv"))) == 1 and len(list(data.glob("val_idx_*.json"))) == 1
    rebuilt = build_index(data)  # the data directory still indexes: the index files are not data
    assert rebuilt.train_windows + rebuilt.val_windows == sum(
        int(p.stem.split("_")[-1]) for p in data.glob("*_idx_*.csv")
    )


def test_no_data(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WindowIndexError, match="no preprocessed files"):
        build_index(tmp_path / "empty", tmp_path)
    with pytest.raises(WindowIndexError, match="does not exist"):
        build_index(tmp_path / "missing", tmp_path)


def test_split_leaving_val_or_train_empty(tmp_path_factory, tmp_path):
    two = preprocessed(tmp_path_factory, "two", [[(8, PICK[0]), (3, PICK[1]), (9, NOT_PICK[0])]])
    with pytest.raises(WindowIndexError, match="leaves val empty: 2 episodes"):
        build_index(two, tmp_path, val_fraction=0.2)
    with pytest.raises(WindowIndexError, match="leaves train empty"):
        build_index(two, tmp_path, val_fraction=0.9)
    short = preprocessed(tmp_path_factory, "short", [[(2, PICK[0]), (5, PICK[1])]])
    with pytest.raises(WindowIndexError, match="at least 6 steps"):
        build_index(short, tmp_path)


def test_segment_files_and_duplicate_episodes_are_refused(small, tmp_path):
    seg = tmp_path / "seg"
    write_synthetic_segments(seg, [[(8, PICK[0])]])
    with pytest.raises(WindowIndexError, match=r"0-1_episode.h5: not an rt1 preprocessed file"):
        build_index(seg, tmp_path / "idx")
    mixed = tmp_path / "mixed"
    shutil.copytree(small, mixed)
    shutil.copy(small / "0-4_episode.h5", mixed / "copy-of-0-4_episode.h5")
    with pytest.raises(
        WindowIndexError,
        match=r"content fingerprint \w+ appears twice: "
        r"0-4_episode.h5 episode 0 \(source episode 0\) and "
        r"copy-of-0-4_episode.h5 episode 0 \(source episode 0\)",
    ):
        build_index(mixed, tmp_path / "idx")


def test_same_episode_under_another_label_is_refused(small, tmp_path):
    """What the out-of-order stage 1 produced: one episode stored twice under different source indices."""
    mixed = tmp_path / "mixed"
    shutil.copytree(small, mixed)
    shutil.copy(small / "0-4_episode.h5", mixed / "zz_episode.h5")
    with h5py.File(mixed / "zz_episode.h5", "r+") as f:
        f["episodes/source_index"][...] = f["episodes/source_index"][:] + 1000
    with pytest.raises(
        WindowIndexError,
        match=r"fingerprint \w+ appears twice: 0-4_episode.h5 episode 0 \(source "
        r"episode 0\) and zz_episode.h5 episode 0 \(source episode 1000\)",
    ):
        build_index(mixed, tmp_path / "idx")


def test_data_emerge_script(small, tmp_path):
    ok = subprocess.run(
        [
            sys.executable,
            str(REPO / "data_emerge.py"),
            "--data-dir",
            str(small),
            "--out-dir",
            str(tmp_path),
            "--seed",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(list(tmp_path.glob("train_idx_*.csv"))) == 1 and "windows" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            str(REPO / "data_emerge.py"),
            "--data-dir",
            str(small),
            "--val-fraction",
            "1.0",
            "--out-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --val-fraction must be in [0, 1) (0: no validation split), got 1.0"
    ]
    assert (
        "--val-fraction"
        in subprocess.run(
            [sys.executable, str(REPO / "data_emerge.py"), "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )


def test_main_reports_a_corrupt_file(small, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(small, broken)
    (broken / "4-7_episode.h5").write_bytes(b"garbage" * 100)
    assert main(["--data-dir", str(broken), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(broken / "4-7_episode.h5") in err[0]
