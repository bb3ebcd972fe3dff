"""Frames at the network's size: stage 2's `--image-size N | HxW | native` through stages 1-3, the loader
and training's check of the data against the model's `frame_size`, on the bundled dataset."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO, run_script

from rt1.config import PRESETS
from rt1.data.images import NATIVE_DESCRIPTION, RESIZE_DESCRIPTION, decode_jpeg, encode_jpeg, resize_frame
from rt1.data.preprocess import PreprocessError, main, preprocess_dir
from rt1.data.preprocessed_file import PreprocessedFile
from rt1.data.segment_schema import read_segment

NATIVE_SIZE = (256, 320)


def source_frames(segment_dir: Path) -> dict[int, list[bytes]]:
    """source episode index -> the segment's JPEG bytes of its frames."""
    return {
        ep.source_index: [bytes(jpeg) for jpeg in ep.images]
        for path in sorted(segment_dir.glob("*_episode.h5"))
        for ep in read_segment(path).episodes
    }


@pytest.fixture(scope="module")
def native_run(segment_dir, tmp_path_factory):
    """Stage 2 (`--image-size native`, the script) and stage 3 (data_emerge.py) on the bundled segments."""
    pre, index = tmp_path_factory.mktemp("native"), tmp_path_factory.mktemp("native_index")
    stage2 = run_script(
        "DataPreprocess_batch_all.py",
        "--in-dir",
        segment_dir,
        "--out-dir",
        pre,
        "--image-size",
        "native",
        "--workers",
        "2",
        "--no-progress",
    )
    assert "native JPEG" in stage2.stdout, stage2.stdout
    run_script("data_emerge.py", "--data-dir", pre, "--out-dir", index, "--seed", "0")
    (train_csv,) = index.glob("train_idx_*.csv")
    return pre, train_csv


@pytest.fixture
def native_dataset(native_run):
    from rt1.data.dataset import RT1Dataset

    dataset = RT1Dataset(native_run[1], native_run[0])
    yield dataset
    dataset.close()


def test_native_keeps_the_source_jpeg_bytes_through_stage_3_and_the_loader(
    native_run, native_dataset, segment_dir
):
    pre = native_run[0]
    sources = source_frames(segment_dir)
    files = sorted(pre.glob("*_episode.h5"))
    assert files
    for path in files:
        with PreprocessedFile(path) as f:
            assert f.image_size == NATIVE_SIZE
            assert f.attrs["resize"] == NATIVE_DESCRIPTION and f.attrs["jpeg_quality"] == 0
            for i in range(f.num_episodes):
                ep = f.episode(i, decode_images=False)
                assert ep.jpeg_frames == sources[ep.source_index]  # byte for byte: no second JPEG generation
    for row in (0, len(native_dataset) // 2, len(native_dataset) - 1):
        item = native_dataset[row]
        frames = item["frames"].numpy()
        assert frames.shape == (6, *NATIVE_SIZE, 3) and frames.dtype == np.uint8
        jpegs = sources[item["source_index"]][item["episode_step"] : item["episode_step"] + 6]
        np.testing.assert_array_equal(frames, np.stack([decode_jpeg(j) for j in jpegs]))


@pytest.fixture(scope="module")
def one_segment(segment_dir, tmp_path_factory) -> Path:
    """The first bundled segment file alone (resizing every frame of the bundled data would be slow)."""
    seg = tmp_path_factory.mktemp("one_segment")
    shutil.copy(sorted(segment_dir.glob("*_episode.h5"))[0], seg)
    return seg


@pytest.mark.parametrize("size", ["256x320", "48x80"])
def test_hxw_squashes_to_h_rows_and_w_columns(one_segment, tmp_path, size):
    height, width = (int(x) for x in size.split("x"))
    preprocess_dir(one_segment, tmp_path, image_size=size, workers=1, progress=False)
    (path,) = tmp_path.glob("*_episode.h5")
    source = {ep.source_index: ep.images for ep in read_segment(one_segment / path.name).episodes}
    with PreprocessedFile(path) as f:
        assert f.image_size == (height, width)
        assert f.attrs["resize"] == RESIZE_DESCRIPTION and f.attrs["jpeg_quality"] == 90
        ep = f.episode(0)
        assert ep.images.shape == (ep.num_steps, height, width, 3)
        for t in (0, ep.num_steps - 1):
            original = decode_jpeg(source[ep.source_index][t])
            squashed = resize_frame(original, (height, width))
            np.testing.assert_array_equal(ep.images[t], decode_jpeg(encode_jpeg(squashed)))
            if (height, width) == NATIVE_SIZE:  # same size: re-encoded at quality 90, not the source bytes
                assert ep.jpeg_frames[t] != bytes(source[ep.source_index][t])
                assert np.abs(ep.images[t].astype(int) - original).mean() < 4


@pytest.mark.parametrize("value", ["7x", "0", "abc"])
def test_bad_image_size_is_a_one_line_error_naming_it(one_segment, tmp_path, value):
    proc = run_script(
        REPO / "DataPreprocess_batch_all.py",
        "--in-dir",
        one_segment,
        "--out-dir",
        tmp_path / "out",
        "--image-size",
        value,
        "--no-progress",
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --image-size") and repr(value) in lines[0], lines
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.h5"))


def test_rerun_with_another_image_size_is_refused(one_segment, tmp_path, capsys):
    def run(out, size):
        argv = ["--in-dir", str(one_segment), "--out-dir", str(out), "--image-size", size, "--no-progress"]
        return main(argv)

    assert run(tmp_path / "native", "native") == 0
    assert run(tmp_path / "native", "native") == 0  # the same size: resumed (skipped)
    assert "0 written, 1 skipped" in capsys.readouterr().out
    for other in ("256x320", "224"):  # 256x320 too: re-encoded frames are not the source bytes
        assert run(tmp_path / "native", other) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "by --image-size native" in err[0] and f"this run uses {other}" in err[0], (
            err
        )
        assert "separate --out-dir per image size" in err[0]
    assert run(tmp_path / "hxw", "256x320") == 0
    with pytest.raises(PreprocessError, match=r"image size \(256, 320\), this run uses native"):
        preprocess_dir(one_segment, tmp_path / "hxw", image_size="native", workers=1, progress=False)
    with pytest.raises(PreprocessError, match=r"image size \(256, 320\), this run uses 320x256"):
        preprocess_dir(one_segment, tmp_path / "hxw", image_size="320x256", workers=1, progress=False)


def test_training_refuses_data_of_another_frame_size_than_the_model(native_run, native_dataset):
    from rt1.train.loaders import TrainSetupError, check_data_fits

    cfg = SimpleNamespace(data_dir=native_run[0], preset="tiny")
    tiny = PRESETS["tiny"].model
    size = f"{tiny.frame_size[0]}x{tiny.frame_size[1]}"
    assert tiny.frame_size != NATIVE_SIZE and tiny.num_frames == 6
    with pytest.raises(TrainSetupError) as e:
        check_data_fits(native_dataset, tiny, "training", cfg)
    message = str(e.value)
    assert "\n" not in message and "6 frames of 256x320" in message and f"6 frames of {size}" in message
    assert f"--image-size {size}" in message and "native" in message
    # a model whose frame_size is the camera's (as Google's RT-1 network) takes the native data
    check_data_fits(native_dataset, SimpleNamespace(frame_size=NATIVE_SIZE, num_frames=6), "training", cfg)


def test_training_frame_takes_n_or_h_w():
    from rt1.data.images import dataset_jpeg, training_frame

    rng = np.random.default_rng(0)
    camera = rng.integers(0, 256, (*NATIVE_SIZE, 3), dtype=np.uint8)
    square = training_frame(camera, 64)
    np.testing.assert_array_equal(square, training_frame(camera, (64, 64)))
    assert training_frame(camera, (48, 80)).shape == (48, 80, 3)
    # native (quality None): the dataset's JPEG decoded, no second generation
    np.testing.assert_array_equal(
        training_frame(camera, NATIVE_SIZE, None), decode_jpeg(dataset_jpeg(camera))
    )


@pytest.mark.slow
def test_the_rt1_preset_trains_end_to_end_on_native_frames_and_its_checkpoint_plots(native_run, tmp_path):
    """Stages 1-3 at the camera's 256x320 -> train_ddp.py --preset rt1 (Google's full-size network, 2 steps)
    -> plot_actions.py on a validation episode: the preset users run, through the scripts they run."""
    import json

    pre, train_csv = native_run
    save = tmp_path / "save"
    args = ("--preset", "rt1", "--data-dir", pre, "--train-index", train_csv, "--save-dir", save)
    run_script(
        "train_ddp.py",
        *args,
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--no-tensorboard",
    )
    metrics = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m["event"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses)), metrics
    (checkpoint,) = save.glob("checkpoint-*.pt")
    episode = next(iter(source_frames_index(train_csv)))
    run_script(
        "plot_actions.py",
        "--checkpoint",
        checkpoint,
        "--data-dir",
        pre,
        "--index",
        train_csv,
        "--episode",
        episode,
        "--out",
        tmp_path / "plots",
    )
    assert (tmp_path / "plots" / f"episode_{episode}.png").is_file()


def source_frames_index(index_csv: Path) -> list[int]:
    from rt1.data.index import index_episodes

    return [e.source_index for e in index_episodes(index_csv)]
