"""Closed-loop simulation of the bundled table-top scene: the world the bundled dataset is recorded in.

    from rt1.sim.env import FractalSimEnv
    from rt1.sim.expert import ScriptedExpert

    env = FractalSimEnv()                                   # or gymnasium.make(register_env())
    expert = ScriptedExpert(env)
    obs, info = env.reset(seed=0, options={"task_family": "pick"})
    expert.reset()
    while True:
        obs, reward, terminated, truncated, info = env.step(expert(obs))   # RLDS action dicts
        if terminated or truncated:
            break
    info["success"]

Modules:
    rt1.sim.scene   scene state, sampling, renderer, instructions and embeddings (numpy only)
    rt1.sim.env     FractalSimEnv, the gymnasium environment: RLDS observation dicts (image uint8
                    256x320x3, instruction, 512-d embedding, state vectors), RLDS action dicts, one
                    success predicate per task family, reward 1 on success
    rt1.sim.expert  ScriptedExpert (privileged, solves every family) and noop_policy: `obs -> action`
    rt1.sim.record  record_episode(index, seed): one DART-recorded expert rollout as a TFDS example dict;
                    `python -m rt1.sim.mini_fractal` writes the bundled dataset from it

One model of the world: every observation in the bundled dataset is what FractalSimEnv returned
(state fields included: `gripper_closedness_commanded` is the last gripper command applied,
`vector_to_go` and `rotation_delta_to_go` are zeros), and replaying a recorded episode's executed actions
(`record_rollout`) in the env from its seed gives back its observations (tests/evaluation/test_sim.py).

Seeds: dataset episode `index` of seed S comes from `np.random.default_rng([S, index])`
(`rt1.sim.record.episode_seeds`); closed-loop evaluation (`rt1.evaluation.closed_loop`) draws its
episodes from a disjoint stream. `rt1.sim.FractalSimEnv` is imported on first use, so `rt1.sim.scene`
stays usable without gymnasium.
"""


def __getattr__(name: str):
    if name == "FractalSimEnv":  # rt1.sim.FractalSimEnv as the README writes it, gymnasium only when used
        from rt1.sim.env import FractalSimEnv

        return FractalSimEnv
    raise AttributeError(f"module 'rt1.sim' has no attribute {name!r}")


__all__ = ["FractalSimEnv"]
