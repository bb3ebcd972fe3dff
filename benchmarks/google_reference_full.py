"""Google's own TF RT-1 (google-research/robotics_transformer) at FULL rt1main size, with deterministic
random weights: its checkpoint, one window of inputs and logits, and its policy step time on 2 CPU threads.

Runs only in the reference environment (TF 2.15.1 / tf-agents 0.19.0 / Google's source + the tensor2robot
stub), never in the project's venv; how to build it: ../shared/reference/google_rt1/README.md (sections 1-2).
With REF = the folder that holds robotics_transformer/, stubs/, env.sh and venv/ (e.g. /work/ref):

    cd /work/main && REF=/work/ref && source $REF/env.sh && \\
        $REF/venv/bin/python benchmarks/google_reference_full.py --out /work/ref/full [--steps 20]

Configuration: configs/transformer_mixin.gin (vocab 256, 8 layers, layer_size 128, 8 heads, ff 512,
T=6, token_embedding 512, dropout 0.1, token learner) with Google's EfficientNetB3 unchanged (width 1.2,
depth 1.4, drop-connect 0.2; both dropouts are inactive at inference), image uint8 256x320x3, NL
embedding 512, the rt1main action spec and order of tests/fixtures/google_rt1/make_google_fixture.py
(11 action tokens). Weights: the recipe of that script (same seeds; zero/one-initialised tensors
randomised, ImageNet Normalization + finalize_state(), BatchNorm moving stats calibrated with momentum 0 on
this script's own 6 frames), imported from it.

Writes
  OUT/ckpt/rt1.{index,data-00000-of-00001}  tf.train.Checkpoint(agent=tf.train.Checkpoint(
                                            _actor_network=net)): keys `agent/_actor_network/...`,
                                            the same 732 names and shapes as rt1main's ckpt-424760
  OUT/io.npz   image uint8 [1,6,256,320,3], natural_language_embedding [1,6,512],
               infer_logits [1,6,11,256] (inference mode, train-rank call), infer_tokens int32 [1,6,11],
               step_logits [6,1,11,256] (the first 6 policy calls, on the same frames),
               policy_step_times_s [steps], policy_step_median_s (float, median of policy_step_times_s),
               config_json (str)
and prints one JSON line with the timings and sizes. A policy step = one call of Google's
TransformerNetwork with obs [1,...] (one new frame; network_state carried; 11 transformer passes),
on 2 threads (OMP_NUM_THREADS=2 TF_NUM_INTRAOP_THREADS=2 TF_NUM_INTEROP_THREADS=1, set here).
Calls 0-5 feed the window's frames, later calls new frames (the window rolls from call 6 on).
"""

from __future__ import annotations

import os

os.environ.update(OMP_NUM_THREADS="2", TF_NUM_INTRAOP_THREADS="2", TF_NUM_INTEROP_THREADS="1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
import json
import sys
import time

import numpy as np
import tensorflow as tf

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "google_rt1")
)
import make_google_fixture as ref  # the shared weight recipe (reference venv only)


def main(argv=None):
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (ckpt/rt1.*, io.npz)")
    ap.add_argument("--steps", type=int, default=20, help="policy calls to time (default 20)")
    args = ap.parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    cfg = ref.FULL_CONFIG
    t = cfg["time_sequence_length"]
    rng = np.random.default_rng(ref.INPUT_SEED)
    images = ref.blocky_frames(rng, (1, t) + ref.IMAGE_SHAPE)
    nle = np.repeat(rng.standard_normal((1, 1, ref.NLE_DIM)).astype(np.float32), t, axis=1)
    later = ref.blocky_frames(rng, (max(args.steps - t, 0), 1) + ref.IMAGE_SHAPE)

    t0 = time.perf_counter()
    net = ref.build_reference(cfg, images, nle)
    build_s = time.perf_counter() - t0
    n_tensors = len(net.variables)
    n_values = sum(int(np.prod(v.shape)) for v in net.variables)

    os.makedirs(os.path.join(args.out, "ckpt"), exist_ok=True)
    path, names = ref.write_checkpoint(net, os.path.join(args.out, "ckpt", "rt1"))
    ckpt_bytes = sum(
        os.path.getsize(os.path.join(args.out, "ckpt", f))
        for f in os.listdir(os.path.join(args.out, "ckpt"))
        if f.startswith("rt1.")
    )

    t0 = time.perf_counter()
    _, infer_logits, _, aux = ref.train_rank_call(net, images, nle, training=False)
    forward_s = time.perf_counter() - t0

    frames = np.concatenate([images.transpose(1, 0, 2, 3, 4), later])[: args.steps]
    state = ref.zero_state(net, 1)
    times, step_logits = [], []
    for frame in frames:
        obs = {"image": tf.constant(frame), "natural_language_embedding": tf.constant(nle[:, 0])}
        t0 = time.perf_counter()
        _, state = net(obs, step_type=None, network_state=state, training=False)
        logits = net.get_aux_info()["action_predictions_logits"].numpy()
        times.append(time.perf_counter() - t0)
        state = dict(state)
        if len(step_logits) < t:
            step_logits.append(logits)
    step_logits = np.stack(step_logits)
    n = len(step_logits)
    step_diff = float(np.abs(step_logits[:, 0] - infer_logits[0, :n]).max())
    times = np.array(times, np.float64)
    median = float(np.median(times))

    ref.save_npz(
        os.path.join(args.out, "io.npz"),
        dict(
            config_json=np.array(json.dumps(ref.spec_json(cfg), sort_keys=True)),
            image=images,
            natural_language_embedding=nle,
            infer_logits=infer_logits.astype(np.float32),
            infer_tokens=aux["action_predictions"].numpy().astype(np.int32),
            step_logits=step_logits.astype(np.float32),
            policy_step_times_s=times,
            policy_step_median_s=np.float64(median),
        ),
    )
    result = dict(
        device="cpu, 2 threads",
        tensors=n_tensors,
        values=n_values,
        ckpt_entries=len(names),
        ckpt_bytes=ckpt_bytes,
        build_s=round(build_s, 2),
        train_rank_forward_s=round(forward_s, 3),
        steps=len(times),
        policy_step_median_s=round(median, 4),
        policy_step_first_s=round(float(times[0]), 4),
        policy_step_min_s=round(float(times.min()), 4),
        logit_std=round(float(infer_logits.std()), 4),
        max_logit_std=round(float(infer_logits.std(axis=-1).max()), 4),
        step_vs_train_rank_max_abs_diff=step_diff,
        wall_s=round(time.perf_counter() - t_start, 1),
        out=os.path.abspath(args.out),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
