"""Closed-loop simulation of the bundled table-top scene.

    rt1.sim.scene   scene state, sampling, renderer, instructions and embeddings (numpy only)
    rt1.sim.env     FractalSimEnv, the gymnasium environment (RLDS observation / action dicts)
    rt1.sim.expert  ScriptedExpert and noop_policy: `obs -> action` policies
    rt1.sim.record  record_episode: an expert rollout as a TFDS example dict (the bundled dataset)

Nothing is imported here, so `rt1.sim.scene` stays usable without gymnasium.
"""
