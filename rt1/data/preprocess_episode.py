"""Stage 2, one episode: a segment file's episode -> a `PreprocessedEpisode` (`rt1.data.preprocess` runs it
over every file).

Every frame is resized to the target size and re-encoded as JPEG (`--image-size native`: the source bytes are
kept), the actions are checked finite and tokenized with the fixed RT-1 bounds. Errors are `PreprocessError`
with a one-line message naming the file, the source episode and, where there is one, the step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rt1.actions import flatten_actions, tokenize
from rt1.data.images import NATIVE, ImageDecodeError, parse_image_size, stored_frame
from rt1.data.preprocessed_schema import PreprocessedEpisode
from rt1.errors import RT1Error, one_line
from rt1.rlds_spec import IMAGE_SHAPE


class PreprocessError(RT1Error, RuntimeError):
    """A preprocessing problem the user can fix; the message is one line and names the file."""


def target_size(image_size) -> tuple[tuple[int, int], bool]:
    """((H, W) of the stored frames, whether they are the source bytes kept: `--image-size native`)."""
    size = parse_image_size(image_size)
    return (tuple(IMAGE_SHAPE[:2]), True) if size == NATIVE else (size, False)


def preprocess_episode(ep, in_path: Path, size: tuple[int, int], native: bool, jpeg_quality: int):
    """The preprocessed episode of segment episode `ep` of `in_path`, its frames stored at `size` (`native`:
    as they are); PreprocessError on a damaged episode, a non-finite action or an undecodable frame."""
    if ep.fingerprint != ep.content_fingerprint():
        raise PreprocessError(
            f"{in_path}: source episode {ep.source_index}: content does not match its "
            "fingerprint (segment damaged): convert it again"
        )
    for key, values in ep.actions.items():
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            raise PreprocessError(
                f"{in_path}: source episode {ep.source_index}, step {int(bad[0][0])}: action "
                f"'{key}' is not finite ({values[tuple(bad[0])]})"
            )
    frames = _frames(ep, in_path, size, native, jpeg_quality)
    try:
        tokens = tokenize(ep.actions)
        flat = flatten_actions(ep.actions)
    except (KeyError, ValueError) as e:
        raise PreprocessError(
            f"{in_path}: source episode {ep.source_index}: bad actions ({one_line(e)})"
        ) from None
    if len(tokens) != ep.num_steps:
        raise PreprocessError(
            f"{in_path}: source episode {ep.source_index} has {ep.num_steps} images but {len(tokens)} actions"
        )
    return PreprocessedEpisode(
        source_index=ep.source_index,
        fingerprint=ep.fingerprint,
        instruction=ep.instruction,
        language_embedding=np.asarray(ep.language_embedding, np.float32),
        action_tokens=tokens,
        actions=flat,
        raw_actions=ep.actions,
        jpeg_frames=frames,
    )


def _frames(ep, in_path: Path, size: tuple[int, int], native: bool, jpeg_quality: int) -> list[bytes]:
    """The episode's frames as stored: resized and re-encoded, or (native) the source JPEG bytes."""
    frames = []
    for t, jpeg in enumerate(ep.images):
        try:
            frames.append(stored_frame(jpeg, size, None if native else jpeg_quality))
        except ImageDecodeError as e:
            hint = (
                " (--image-size native stores 256x320 frames as they are: resize with HxW)" if native else ""
            )
            raise PreprocessError(
                f"{in_path}: source episode {ep.source_index}, step {t}: {e}{hint}"
            ) from None
    return frames


__all__ = ["PreprocessError", "preprocess_episode", "target_size"]
