"""The feature spec of `fractal20220817_data` 0.1.0 (RLDS, TFDS format), as the real dataset has it.

`STEP_SPEC` / `EPISODE_METADATA_SPEC` are plain data, usable without TensorFlow. `tfds_features()`
builds the identical `tfds.features.FeaturesDict` (used to write the bundled dataset), and
`spec_mismatches(builder_features)` compares a dataset on disk against the spec (used by stage 1
to refuse a directory that is not fractal data).

Episode layout:
    aspects:     already_success, feasible, has_aspects, success, undesirable        (bool)
    attributes:  collection_mode, data_type, env, location, objects_family, task_family (int64)
                 and the same names with a `_name` suffix                             (string)
    steps:       Dataset of steps; each step:
        is_first, is_last, is_terminal   bool
        reward                           float32 scalar
        observation/image                Image (256, 320, 3) uint8, JPEG-encoded on disk
        observation/natural_language_instruction   string (constant within an episode)
        observation/natural_language_embedding     float32 (512,) (constant within an episode)
        observation/<vector keys>        float32, shapes in OBSERVATION_VECTORS
        action/<keys>                    float32, terminate_episode int32 (3,) one-hot
"""

from __future__ import annotations

from dataclasses import dataclass

DATASET_NAME = "fractal20220817_data"
DATASET_VERSION = "0.1.0"
IMAGE_SHAPE = (256, 320, 3)
EMBEDDING_DIM = 512


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, or "string"
    doc: str = ""


OBSERVATION_VECTORS: dict[str, TensorSpec] = {
    "base_pose_tool_reached": TensorSpec(
        (7,), "float32", "end-effector base-relative position+quaternion pose"
    ),
    "gripper_closed": TensorSpec((1,), "float32"),
    "gripper_closedness_commanded": TensorSpec((1,), "float32", "continuous gripper position"),
    "height_to_bottom": TensorSpec((1,), "float32", "height of end-effector from ground"),
    "orientation_box": TensorSpec((2, 3), "float32"),
    "orientation_start": TensorSpec((4,), "float32"),
    "robot_orientation_positions_box": TensorSpec((3, 3), "float32"),
    "rotation_delta_to_go": TensorSpec(
        (3,), "float32", "rotational displacement from current orientation to target"
    ),
    "src_rotation": TensorSpec((4,), "float32"),
    "vector_to_go": TensorSpec((3,), "float32", "displacement from current end-effector position to target"),
    "workspace_bounds": TensorSpec((3, 3), "float32"),
}

ACTION_SPEC: dict[str, TensorSpec] = {
    "base_displacement_vector": TensorSpec((2,), "float32"),
    "base_displacement_vertical_rotation": TensorSpec((1,), "float32"),
    "gripper_closedness_action": TensorSpec((1,), "float32", "continuous gripper position"),
    "rotation_delta": TensorSpec(
        (3,), "float32", "rpy commanded orientation displacement, in base-relative frame"
    ),
    "terminate_episode": TensorSpec((3,), "int32"),
    "world_vector": TensorSpec(
        (3,), "float32", "commanded end-effector displacement, in base-relative frame"
    ),
}

# Flat "path -> spec" of one step, with "/" separating nesting levels.
STEP_SPEC: dict[str, TensorSpec] = {
    "is_first": TensorSpec((), "bool"),
    "is_last": TensorSpec((), "bool"),
    "is_terminal": TensorSpec((), "bool"),
    "reward": TensorSpec((), "float32"),
    "observation/image": TensorSpec(IMAGE_SHAPE, "uint8"),
    "observation/natural_language_instruction": TensorSpec((), "string"),
    "observation/natural_language_embedding": TensorSpec((EMBEDDING_DIM,), "float32"),
    **{f"observation/{k}": v for k, v in OBSERVATION_VECTORS.items()},
    **{f"action/{k}": v for k, v in ACTION_SPEC.items()},
}

ASPECT_KEYS = ("already_success", "feasible", "has_aspects", "success", "undesirable")
ATTRIBUTE_KEYS = ("collection_mode", "data_type", "env", "location", "objects_family", "task_family")

EPISODE_METADATA_SPEC: dict[str, TensorSpec] = {
    **{f"aspects/{k}": TensorSpec((), "bool") for k in ASPECT_KEYS},
    **{f"attributes/{k}": TensorSpec((), "int64") for k in ATTRIBUTE_KEYS},
    **{f"attributes/{k}_name": TensorSpec((), "string") for k in ATTRIBUTE_KEYS},
}


# Feature classes and descriptions as the TFDS catalog documents the real dataset: `Tensor` for every
# leaf (strings and bools included), `Scalar` only for `reward`, `Image` for the camera image.
ASPECTS_DOC = "Session Aspects for crowdcompute ratings"


def tfds_features():
    """The `tfds.features.FeaturesDict` of one episode, identical to the real dataset's."""
    import numpy as np
    import tensorflow_datasets as tfds

    def tensor(spec: TensorSpec):
        dtype = np.str_ if spec.dtype == "string" else np.dtype(spec.dtype)
        return tfds.features.Tensor(shape=spec.shape, dtype=dtype, doc=spec.doc or None)

    def nested(flat: dict[str, TensorSpec], prefix: str) -> dict:
        return {path[len(prefix) :]: tensor(spec) for path, spec in flat.items() if path.startswith(prefix)}

    observation = nested(STEP_SPEC, "observation/")
    observation["image"] = tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8, encoding_format="jpeg")
    step = {
        "action": tfds.features.FeaturesDict(nested(STEP_SPEC, "action/")),
        "observation": tfds.features.FeaturesDict(observation),
        **{k: tensor(v) for k, v in STEP_SPEC.items() if "/" not in k},
    }
    step["reward"] = tfds.features.Scalar(dtype=np.float32)
    return tfds.features.FeaturesDict(
        {
            "aspects": tfds.features.FeaturesDict(nested(EPISODE_METADATA_SPEC, "aspects/"), doc=ASPECTS_DOC),
            "attributes": tfds.features.FeaturesDict(nested(EPISODE_METADATA_SPEC, "attributes/")),
            "steps": tfds.features.Dataset(step),
        }
    )


def _flatten_features(features, prefix: str = "") -> dict:
    """tfds FeaturesDict -> {path: leaf feature}, descending into nested dicts and Datasets."""
    import tensorflow_datasets as tfds

    out = {}
    if isinstance(features, tfds.features.Dataset):
        features = features.feature
    for key, feature in features.items():
        path = f"{prefix}{key}"
        if isinstance(feature, (tfds.features.FeaturesDict, tfds.features.Dataset)):
            out.update(_flatten_features(feature, path + "/"))
        else:
            out[path] = feature
    return out


def spec_mismatches(features) -> list[str]:
    """Differences between a dataset's `builder.info.features` and the fractal step spec.

    Returns human-readable problems (missing keys, wrong shape or dtype); empty when it matches.
    Episode metadata (aspects/attributes) is not required: conversion does not need it.
    """
    import numpy as np
    import tensorflow_datasets as tfds

    flat = _flatten_features(features)
    if "steps" not in features:
        return ["no 'steps' feature (not an RLDS dataset)"]
    problems = []
    for path, spec in STEP_SPEC.items():
        full = f"steps/{path}"
        if full not in flat:
            problems.append(f"missing '{full}'")
            continue
        feature = flat[full]
        if spec.dtype == "string":
            if not isinstance(feature, tfds.features.Text) and np.dtype(feature.np_dtype) != np.object_:
                problems.append(f"'{full}' is {feature.np_dtype}, expected a string")
            continue
        if tuple(feature.shape) != spec.shape:
            problems.append(f"'{full}' has shape {tuple(feature.shape)}, expected {spec.shape}")
        if np.dtype(feature.np_dtype) != np.dtype(spec.dtype):
            problems.append(f"'{full}' has dtype {np.dtype(feature.np_dtype).name}, expected {spec.dtype}")
    return problems
