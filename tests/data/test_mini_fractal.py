"""The bundled dataset is in exactly the real fractal20220817_data format and is learnable and deterministic."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import BUNDLED_EPISODES, flatten_dict, run_script

from rt1.rlds_spec import EPISODE_METADATA_SPEC, STEP_SPEC
from rt1.sim.mini_fractal import instruction_embedding, make_episode


def test_reads_back_with_builder_from_directory_and_matches_spec(rlds_dir):
    builder = tfds.builder_from_directory(str(rlds_dir))
    assert builder.info.name == "fractal20220817_data"
    assert str(builder.info.version) == "0.1.0"
    assert list(builder.info.splits) == ["train"]
    assert builder.info.splits["train"].num_examples == BUNDLED_EPISODES
    image_feature = builder.info.features["steps"]["observation"]["image"]
    assert image_feature.encoding_format == "jpeg"
    features_json = json.loads((rlds_dir / "features.json").read_text())
    assert "steps" in json.dumps(features_json)

    lengths = []
    for episode in tfds.as_numpy(builder.as_dataset(split="train[:12]")):
        meta = flatten_dict({"aspects": episode["aspects"], "attributes": episode["attributes"]})
        assert set(meta) == set(EPISODE_METADATA_SPEC)
        for path, spec in EPISODE_METADATA_SPEC.items():
            expected = bytes if spec.dtype == "string" else np.dtype(spec.dtype)
            assert (
                isinstance(meta[path], bytes)
                if expected is bytes
                else np.asarray(meta[path]).dtype == expected
            ), path
        steps = list(episode["steps"])
        lengths.append(len(steps))
        for step in steps:
            flat = flatten_dict(step)
            assert set(flat) == set(STEP_SPEC)
            for path, spec in STEP_SPEC.items():
                value = flat[path]
                if spec.dtype == "string":
                    assert isinstance(value, bytes), path
                else:
                    value = np.asarray(value)
                    assert value.shape == spec.shape, (path, value.shape)
                    assert value.dtype == np.dtype(spec.dtype), (path, value.dtype)
            assert flat["observation/image"].shape == (256, 320, 3)
        terminate = np.stack([s["action"]["terminate_episode"] for s in steps])
        assert (terminate[:-1] == [0, 1, 0]).all() and (terminate[-1] == [1, 0, 0]).all()
        assert steps[0]["is_first"] and steps[-1]["is_last"] and not any(s["is_last"] for s in steps[:-1])
        embedding = steps[0]["observation"]["natural_language_embedding"]
        assert abs(np.linalg.norm(embedding) - 1) < 1e-5
        assert all((s["observation"]["natural_language_embedding"] == embedding).all() for s in steps)
    assert len(set(lengths)) > 3


def test_feature_classes_and_descriptions_are_the_catalogs(rlds_dir):
    """The TFDS catalog's feature table for fractal20220817_data: Tensor everywhere but reward and image."""
    features = tfds.builder_from_directory(str(rlds_dir)).info.features
    step = features["steps"].feature
    assert type(step["reward"]) is tfds.features.Scalar
    assert type(step["observation"]["image"]) is tfds.features.Image
    leaves = [
        *(features["aspects"][k] for k in features["aspects"].keys()),
        *(features["attributes"][k] for k in features["attributes"].keys()),
        *(step[k] for k in ("is_first", "is_last", "is_terminal")),
        *(step["observation"][k] for k in step["observation"].keys() if k != "image"),
        *(step["action"][k] for k in step["action"].keys()),
    ]
    assert all(type(f) is tfds.features.Tensor for f in leaves)
    assert step["observation"]["natural_language_instruction"].np_dtype == np.object_  # a string Tensor
    assert features["aspects"].doc.desc == "Session Aspects for crowdcompute ratings"
    assert (
        step["action"]["world_vector"].doc.desc
        == "commanded end-effector displacement, in base-relative frame"
    )
    assert (
        step["action"]["rotation_delta"].doc.desc
        == "rpy commanded orientation displacement, in base-relative frame"
    )
    assert step["observation"]["height_to_bottom"].doc.desc == "height of end-effector from ground"
    info = json.loads((rlds_dir / "dataset_info.json").read_text())
    assert "disableShuffling" not in info  # read with TFDS's default interleave, like the real dataset


def test_content_is_varied_and_follows_the_scene():
    episodes = [make_episode(i, seed=0) for i in range(60)]
    instructions = {e["steps"][0]["observation"]["natural_language_instruction"] for e in episodes}
    assert any(i.startswith("pick") and "from" not in i for i in instructions)
    assert any("from" in i and "drawer" in i for i in instructions)
    assert any(i.startswith("open") for i in instructions) and any(
        i.startswith("close") for i in instructions
    )
    assert any(i.startswith("move") and " near " in i for i in instructions)
    assert any(i.endswith("upright") for i in instructions) and any(i.endswith("over") for i in instructions)
    lengths = [len(e["steps"]) for e in episodes]
    assert min(lengths) < 6 and max(lengths) > 20
    # The gripper closes in every full-length pick episode, after moving toward the object.
    for e in episodes:
        instruction = e["steps"][0]["observation"]["natural_language_instruction"]
        grip = np.array([s["action"]["gripper_closedness_action"][0] for s in e["steps"]])
        if instruction.startswith("pick") and "from" not in instruction and len(grip) > 6:
            assert grip[0] == -1 and grip.max() == 1
    # The image changes where the gripper moves (in the first episode not cut short).
    images = [s["observation"]["image"] for s in next(e for e in episodes if len(e["steps"]) > 6)["steps"]]
    assert np.abs(images[0].astype(int) - images[3].astype(int)).sum() > 0


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = make_episode(5, seed=1), make_episode(5, seed=1), make_episode(5, seed=2)
    for x, y in zip(a["steps"], b["steps"]):
        assert (x["observation"]["image"] == y["observation"]["image"]).all()
        assert (x["action"]["world_vector"] == y["action"]["world_vector"]).all()
    first = lambda e: e["steps"][0]["observation"]["image"]  # noqa: E731
    assert not np.array_equal(first(a), first(c))
    e1, e2 = instruction_embedding("pick coke can"), instruction_embedding("pick coke can")
    assert e1.dtype == np.float32 and e1.shape == (512,) and (e1 == e2).all()
    assert not np.allclose(e1, instruction_embedding("pick pepsi can"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--episodes", "0"], "--episodes must be at least 1"),
        (["--episodes", "-3"], "--episodes must be at least 1"),
    ],
)
def test_bad_episode_count_is_refused(tmp_path, args, message):
    proc = run_script("-m", "rt1.sim.mini_fractal", "--out", tmp_path / "out", *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("\n") == 1


def test_non_empty_output_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    proc = run_script("-m", "rt1.sim.mini_fractal", "--out", tmp_path, "--episodes", "2", check=False)
    assert proc.returncode == 2 and "not empty" in proc.stderr and "--overwrite" in proc.stderr
    assert (tmp_path / "keep.txt").read_text() == "user data"
    run_script("-m", "rt1.sim.mini_fractal", "--out", tmp_path, "--episodes", "2", "--overwrite")
    builder = tfds.builder_from_directory(str(tmp_path / "fractal20220817_data" / "0.1.0"))
    assert builder.info.splits["train"].num_examples == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mini_fractal-")]
