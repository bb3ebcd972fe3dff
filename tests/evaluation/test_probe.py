"""The linear probe of image tokens: the ridge fit, scenes aligned with their targets, the command line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_closed_loop import _random_tiny_checkpoint

from rt1.evaluation.probe import PROBE_FAMILIES, ProbeError, main, probe_model, probe_scenes, ridge_probe


def test_ridge_probe_reads_a_linear_target_and_not_noise():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((400, 60))
    readable = features[:, :2] @ np.array([[1.0, 0.5], [-0.3, 2.0]]) + 0.01 * rng.standard_normal((400, 2))
    noise = rng.standard_normal((400, 2))
    result = ridge_probe(features, {"readable": readable, "noise": noise}, train=300)
    assert min(result["r2"]["readable"]) > 0.95
    assert max(result["r2"]["noise"]) < 0.1
    with pytest.raises(ProbeError, match="train scenes 399"):
        ridge_probe(features, {"noise": noise}, train=399)


def test_scenes_are_table_families_and_their_targets_are_the_scenes():
    from rt1.sim.env import FractalSimEnv

    data = probe_scenes(8, (32, 32), seed=123)
    assert data["frames"].shape == (8, 32, 32, 3) and data["frames"].dtype == np.uint8
    assert data["text"].shape == (8, 512) and data["named object"].shape == data["gripper"].shape == (8, 2)
    env = FractalSimEnv(render_images=False)
    for i in range(8):
        obs, info = env.reset(seed=123 + i, options={"task_family": PROBE_FAMILIES[i % 4]})
        assert info["task_family"] == PROBE_FAMILIES[i % 4]
        np.testing.assert_allclose(data["named object"][i], env.target_object().position[:2])
        np.testing.assert_allclose(data["gripper"][i], env.scene.gripper[:2])
        np.testing.assert_array_equal(data["text"][i], obs["natural_language_embedding"])


class PixelTokens(torch.nn.Module):
    """A stand-in encoder whose one image token is the frame's pixels: the gripper is large and dark, so its
    place is linearly readable from them; a probe whose targets were not its frames' would read nothing."""

    config = SimpleNamespace(frame_size=(32, 32))

    def encode_frames(self, frames, text):
        return frames.float().reshape(len(frames), 1, -1) / 255.0


def test_the_probe_reads_the_gripper_from_pixels_and_not_the_named_object(one_thread):
    result = probe_model(PixelTokens(), scenes=400, train=300)
    assert min(result["r2"]["gripper"]) > 0.3, result
    assert max(result["r2"]["named object"]) < min(result["r2"]["gripper"]), result


def test_command_line_writes_json_and_refuses_bad_sizes_in_one_line(tmp_path, capsys, one_thread):
    checkpoint = _random_tiny_checkpoint(tmp_path / "checkpoint-1.pt")
    out = tmp_path / "probe.json"
    args = ["--checkpoint", str(checkpoint), "--scenes", "30", "--train-scenes", "20"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["r2"]) == {"named object", "gripper"} and result["scenes"] == 30
    assert all(np.isfinite(v) for pair in result["r2"].values() for v in pair)
    assert "named object" in capsys.readouterr().out
    assert main(["--checkpoint", str(checkpoint), "--scenes", "30", "--train-scenes", "29"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train scenes 29" in err and len(err.splitlines()) == 1
