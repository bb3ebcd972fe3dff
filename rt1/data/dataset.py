"""The training loader's dataset: 6-step windows of preprocessed files, listed by an index CSV.

    ds = RT1Dataset("train_idx_427618.csv", "PRE_DIR", augment=True)
    item = ds[0]

An item is a dict:
    frames         uint8 (6, H, W, 3)   the window's frames, channels-last as stored (the model scales them)
    text_embed     float32 (512,)       the instruction's embedding
    instruction    str
    action_tokens  int64 (6, 11)        RT-1 action tokens of the 6 steps (the training targets)
    actions        float32 (6, 11)      continuous actions (`rt1.actions.flatten_actions` order), for metrics
    file           str                  the file, relative to data_dir
    start_index    int                  step row of the window's first step in that file
    source_index   int                  the episode's index in the RLDS train split
    episode_step   int                  position of the window's first step in its episode
    row            int                  the item's row in the index

`chunk(row, k)` reads k consecutive windows at once (training with --chunk-windows): their k + 5 frames as
one slice of the file, decoded once; `chunk_table(K)` tiles the index's windows into such chunks.

Rows are looked up directly (arrays indexed by row, no scan). Files are opened lazily in the process
that reads them and kept open (at most `MAX_OPEN_FILES`, least recently used closed first); a
handle opened in another process (the parent of a forked DataLoader worker) is never used, and
pickling drops handles, so the dataset works with `num_workers > 0`, `persistent_workers`,
`pin_memory` and `DistributedSampler`. Each window is checked to lie inside one episode, and each
file against the content digest the index recorded: a mismatch raises `DatasetError` naming the file
and the row, never a wrong sample.

Augmentation (`augment=True`, for training only): RT-1's `pad_then_crop` random shift. RT-1 pads a
256x320 frame by 20 rows and 50 columns of zeros and crops it back at a random offset, the same
offset for every frame of the window; here the padding is scaled to the stored frame size (for
224x224: 17 rows, 35 columns). The offset comes from torch's RNG, which DataLoader seeds per worker.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rt1.config import DEFAULT_WINDOW
from rt1.data.index import IndexEpisode, WindowIndexError, index_episodes, read_index
from rt1.data.index_checks import check_files_confined
from rt1.data.preprocessed_file import PreprocessedFile, WindowError
from rt1.data.preprocessed_schema import PreprocessedFormatError
from rt1.errors import RT1Error

# RT-1's pad_then_crop padding for 256x320 frames, as fractions of the frame height and width.
RT1_SHIFT_FRACTION = (20 / 256, 50 / 320)


class DatasetError(RT1Error, ValueError):
    """The index and the data do not agree (missing file, stale index, window across episodes...)."""


def random_offset(max_shift: tuple[int, int], generator: torch.Generator | None = None) -> tuple[int, int]:
    """A uniform random (dy, dx) with |dy| <= max_shift[0], |dx| <= max_shift[1], from torch's RNG."""
    pad_h, pad_w = max_shift
    offset = torch.randint(0, (2 * pad_h + 1) * (2 * pad_w + 1), (1,), generator=generator).item()
    return offset // (2 * pad_w + 1) - pad_h, offset % (2 * pad_w + 1) - pad_w


def shifted_frames(frames: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Frames (n, H, W, C) -> a new contiguous array of the same shape, content moved by `offset` (dy, dx), zero-filled.

    Moving by (dy, dx) equals padding the frames with zeros and cropping the original size at a shifted
    position (RT-1's pad_then_crop); one offset for all frames.
    """
    n, height, width, channels = frames.shape
    dy, dx = offset
    if dy == 0 and dx == 0:
        return frames.copy()
    out = np.zeros_like(frames)
    h, w = height - abs(dy), width - abs(dx)
    if h > 0 and w > 0:
        out[:, max(0, dy) : max(0, dy) + h, max(0, dx) : max(0, dx) + w] = frames[
            :, max(0, -dy) : max(0, -dy) + h, max(0, -dx) : max(0, -dx) + w
        ]
    return out


MAX_OPEN_FILES = 64  # preprocessed files a loader process keeps open


class RT1Dataset(Dataset):
    """Windows of preprocessed files listed by an index CSV of `data_emerge.py` (see the module docstring)."""

    def __init__(
        self,
        index_csv: str | os.PathLike,
        data_dir: str | os.PathLike,
        *,
        augment: bool = False,
        window: int | None = None,
        check_files: bool = True,
    ):
        self.index_csv = Path(index_csv)
        self.data_dir = Path(data_dir)
        self.augment = augment
        try:
            index = read_index(self.index_csv)
            check_files_confined(index, self.data_dir)  # before any file it names is opened
        except WindowIndexError as e:
            raise DatasetError(str(e)) from None
        meta = index.meta or {}
        index_window = meta.get("window")
        if window is not None and index_window is not None and window != index_window:
            raise DatasetError(
                f"{self.index_csv} was built for windows of {index_window} steps, not {window}: "
                "rebuild it with data_emerge.py --window"
            )
        self.window = int(window or index_window or DEFAULT_WINDOW)
        self._starts = index.starts
        self._file_ids = index.file_ids
        self.files = index.files
        self._digests = {f["file"]: f["content_digest"] for f in meta.get("files", [])}
        if not self.data_dir.is_dir():
            raise DatasetError(f"data directory {self.data_dir} does not exist (index {self.index_csv})")
        if check_files:
            missing = [name for name in self.files if not (self.data_dir / name).is_file()]
            if missing:
                raise DatasetError(
                    f"{self.index_csv} names {len(missing)} file(s) missing from {self.data_dir}, "
                    f"e.g. {self.data_dir / missing[0]}"
                )
        self._pid: int | None = None
        self._open: OrderedDict[int, PreprocessedFile] = OrderedDict()
        self._frames: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._starts)

    def episodes(self) -> list[IndexEpisode]:
        """The episodes this index covers (from its sidecar), e.g. to plot by episode or instruction."""
        return index_episodes(self.index_csv)

    # -- file handles: per process, lazily opened, LRU-bounded --------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        state["_pid"] = None
        state["_frames"] = {}
        return state

    def _file(self, file_id: int, row: int) -> PreprocessedFile:
        pid = os.getpid()
        if pid != self._pid:  # new process (forked worker): never touch the parent's handles
            self._open = OrderedDict()
            self._frames = {}
            self._pid = pid
        handle = self._open.get(file_id)
        if handle is not None:
            self._open.move_to_end(file_id)
            return handle
        name = self.files[file_id]
        path = self.data_dir / name
        try:
            handle = PreprocessedFile(path)
        except FileNotFoundError:
            raise DatasetError(f"{self.index_csv} row {row}: file {path} does not exist") from None
        except PreprocessedFormatError as e:
            raise DatasetError(f"{self.index_csv} row {row}: {e}") from None
        expected = self._digests.get(name)
        if expected is not None and handle.content_digest != expected:
            handle.close()
            raise DatasetError(
                f"{path} changed after {self.index_csv} was built (content digest differs): "
                "rebuild the index with data_emerge.py"
            )
        self._open[file_id] = handle
        while len(self._open) > MAX_OPEN_FILES:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return handle

    def _frame_buffer(self, image_size: tuple[int, int], length: int) -> np.ndarray:
        """A (length, H, W, 3) view of a decode buffer reused by this thread (fresh pages cost more than decoding
        them); grown to the longest chunk read so far."""
        thread = threading.get_ident()
        buffer = self._frames.get(thread)
        if buffer is None or buffer.shape[1:3] != tuple(image_size) or len(buffer) < length:
            buffer = self._frames[thread] = np.empty((max(length, self.window), *image_size, 3), np.uint8)
        return buffer[:length]

    def close(self) -> None:
        """Close the files this process opened."""
        if self._pid == os.getpid():
            for handle in self._open.values():
                handle.close()
        self._open = OrderedDict()

    # -- items ---------------------------------------------------------------------------------------

    def __getitem__(self, row: int) -> dict:
        row, w, frames = self._read(row, self.window)
        start = int(self._starts[row])
        return {
            "frames": frames,
            "text_embed": torch.from_numpy(np.asarray(w["language_embedding"], np.float32)),
            "instruction": w["instruction"],
            "action_tokens": torch.from_numpy(w["action_tokens"].astype(np.int64)),
            "actions": torch.from_numpy(np.asarray(w["actions"], np.float32)),
            "file": self.files[int(self._file_ids[row])],
            "start_index": start,
            "source_index": w["source_index"],
            "episode_step": w["episode_step"],
            "row": row,
        }

    def chunk(self, row: int, windows: int) -> dict:
        """The `windows` consecutive windows from index row `row`'s, as one chunk: its windows + F - 1 steps read
        as one slice of the file (each frame decoded once), one random shift for all of them (`augment`).

        -> frames uint8 (windows + F - 1, H, W, 3), action_tokens int64 (windows + F - 1, 11) (window j's
        targets are steps j .. j + F - 1), actions float32 (windows + F - 1, 11) (the continuous actions behind
        them), text_embed float32 (512,), windows, row. The steps must lie in one
        episode (DatasetError naming the row otherwise); `chunk(row, 1)` holds the frames of `self[row]`.
        """
        if int(windows) < 1:
            raise ValueError(f"a chunk has at least one window, got {windows}")
        row, w, frames = self._read(row, int(windows) + self.window - 1)
        return {
            "frames": frames,
            "text_embed": torch.from_numpy(np.asarray(w["language_embedding"], np.float32)),
            "action_tokens": torch.from_numpy(w["action_tokens"].astype(np.int64)),
            "actions": torch.from_numpy(np.asarray(w["actions"], np.float32)),
            "windows": int(windows),
            "row": row,
        }

    def chunk_table(self, chunk_windows: int) -> tuple[np.ndarray, np.ndarray]:
        """Every window tiled into chunks of up to `chunk_windows` consecutive windows of one episode.

        -> (rows (N,) int64: every index row once, ordered by file and start step; chunk (N,) int64: the chunk
        of rows[i], numbered in that order). Windows of one file whose starts follow each other are one episode's
        (every window lies in one episode, and the next episode's first window starts F steps after this one's
        last; with F = 1 every window is a chunk: nothing to share); each such run is cut into chunks from its
        first window, its tail a shorter chunk.
        """
        rows = np.lexsort((self._starts, self._file_ids)).astype(np.int64)
        starts, files = self._starts[rows], self._file_ids[rows]
        new_run = np.ones(len(rows), bool)
        new_run[1:] = (files[1:] != files[:-1]) | (starts[1:] != starts[:-1] + 1) | (self.window == 1)
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(rows)), 0))
        new_chunk = new_run | ((np.arange(len(rows)) - run_start) % int(chunk_windows) == 0)
        return rows, np.cumsum(new_chunk) - 1

    def _read(self, row: int, length: int) -> tuple[int, dict, torch.Tensor]:
        """(the row, the `length` steps from its window's start (PreprocessedFile.window), their frames shifted as
        `augment` says, a new tensor)."""
        n = len(self._starts)
        row = int(row)
        if row < 0:
            row += n
        if not 0 <= row < n:
            raise IndexError(f"row {row} out of range for {self.index_csv} ({n} windows)")
        start = int(self._starts[row])
        handle = self._file(int(self._file_ids[row]), row)
        try:
            w = handle.window(start, length, out=self._frame_buffer(handle.image_size, length))
        except WindowError as e:
            raise DatasetError(
                f"{self.index_csv} row {row}: {e}: the index does not match the data, "
                "rebuild it with data_emerge.py"
            ) from None
        except PreprocessedFormatError as e:
            raise DatasetError(f"{self.index_csv} row {row}: {e}") from None
        frames = w["frames"]  # (length, H, W, 3), a buffer this process reuses
        offset = (0, 0)
        if self.augment:
            height, width = frames.shape[1:3]
            offset = random_offset(
                (int(round(height * RT1_SHIFT_FRACTION[0])), int(round(width * RT1_SHIFT_FRACTION[1])))
            )
        return row, w, torch.from_numpy(shifted_frames(frames, offset))  # a copy: the buffer is reused
