"""python -m rt1.serve: a real server process on 127.0.0.1, sessions equal to in-process RT1Policy episodes,
bad messages answered with errors, disconnects, SIGTERM, and closed-loop evaluation through it."""

from __future__ import annotations

import json
import signal
import threading
import time

import msgpack
import numpy as np
import pytest
import torch
from test_export import TINY, write_checkpoint
from test_policy import calibrated

from rt1.evaluation.closed_loop import RT1EnvPolicy
from rt1.export import export
from rt1.policy import RT1Policy
from rt1.rlds_spec import IMAGE_SHAPE
from rt1.serve import PolicyClient, ServerError, encode, local_server, pack_array
from rt1.sim.scene import instruction_embedding

STEPS = 8  # past the 6-frame window: the token cache rolls over
LIMIT = 2**20  # --max-message-bytes of the test server


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("served")
    model = calibrated(TINY)
    with torch.no_grad():  # a random tiny model's argmax hardly moves with its inputs: make the head sharper
        model.to_logits[1].weight.mul_(30.0)
    checkpoint = write_checkpoint(directory / "checkpoint-1.pt", model)
    return export(checkpoint, directory / "model", embedding_source="mini-fractal")


@pytest.fixture(scope="module")
def server(exported):
    with local_server(exported, "--threads", "1", "--max-message-bytes", str(LIMIT)) as (uri, proc):
        yield uri
        assert proc.poll() is None, "the server died during the tests"


@pytest.fixture(scope="module")
def in_process(exported):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's thread count: the same float reductions
    yield RT1Policy.from_path(exported)
    torch.set_num_threads(threads)


def make_episode(seed: int, instruction: str):
    rng = np.random.default_rng(seed)
    embedding = instruction_embedding(instruction)
    # 32x32-pixel blocks: pixel noise would average out to flat grey in the resize to 64x64
    return [
        {
            "image": np.kron(
                rng.integers(0, 256, (8, 10, 3), dtype=np.uint8), np.ones((32, 32, 1), np.uint8)
            ),
            "natural_language_embedding": embedding,
            "natural_language_instruction": instruction,
        }
        for _ in range(STEPS)
    ]


def expected_actions(policy: RT1Policy, episode) -> tuple[list[dict], np.ndarray]:
    """The in-process closed-loop path (RT1EnvPolicy: training_frame, RT1Policy.step): actions and tokens."""
    env_policy = RT1EnvPolicy(policy)
    env_policy.reset()
    actions, tokens = [], []
    for obs in episode:
        actions.append(env_policy(obs))
        tokens.append(policy.last_tokens.copy())
    return actions, np.stack(tokens)


def assert_same_actions(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for t, (a, b) in enumerate(zip(got, want)):
        assert set(a) == set(b)
        for key in b:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (t, key)


def test_two_concurrent_clients_each_get_their_in_process_actions(server, in_process):
    episodes = [make_episode(1, "pick coke can"), make_episode(2, "open middle drawer")]
    barrier = threading.Barrier(2, timeout=60)
    got: dict[int, tuple] = {}

    def run(i: int) -> None:
        with PolicyClient(server, timeout=60) as client:
            client.reset(instruction_embedding=episodes[i][0]["natural_language_embedding"])
            actions, tokens = [], []
            for obs in episodes[i]:
                barrier.wait()  # step for step together: the two sessions interleave on the server
                actions.append(client.act(obs))
                tokens.append(client.last_tokens)
            got[i] = actions, np.stack(tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert set(got) == {0, 1}, "a client failed"
    want = [expected_actions(in_process, episode) for episode in episodes]
    for i in range(2):
        assert_same_actions(got[i][0], want[i][0])
        np.testing.assert_array_equal(got[i][1], want[i][1])
    # the check can fail: the two episodes act differently, and history changes the actions
    assert not np.array_equal(want[0][1], want[1][1])
    assert len({tuple(t) for t in want[0][1]}) > 1


def test_instruction_text_is_the_embedding_of_the_bundled_dataset(server, in_process):
    episode = make_episode(3, "knock redbull can over")
    with PolicyClient(server, timeout=60) as client:
        assert client.info()["model"]["accepts_instruction_text"]
        client.reset(instruction="knock redbull can over")
        actions = [client.act({"image": obs["image"]}) for obs in episode[:3]]
    assert_same_actions(actions, expected_actions(in_process, episode[:3])[0])


def _array(dtype, shape, data=None):
    a = np.zeros(shape, dtype)
    packed = pack_array(a)
    if data is not None:
        packed["data"] = data
    return packed


def _act(**observation):
    return encode({"type": "act", "observation": observation})


IMAGE = np.zeros(IMAGE_SHAPE, np.uint8)
EMBEDDING = instruction_embedding("pick coke can")
# (kind, frame, words of the expected error)
BAD_MESSAGES = [
    ("not msgpack", b"\xc1\xc1garbage", "not a msgpack message"),
    ("text frame", "hello", "text frames are not accepted"),
    ("not a map", msgpack.packb([1, 2, 3]), "must be a msgpack map, got a list"),
    ("unknown type", encode({"type": "jump"}), "unknown request type 'jump'"),
    ("no type", encode({"observation": {}}), "unknown request type None"),
    (
        "unknown key",
        encode({"type": "reset", "instruction": "pick coke can", "speed": 2}),
        "unknown key(s) ['speed']",
    ),
    ("act without observation", encode({"type": "act"}), "missing key(s) ['observation']"),
    (
        "embedding of the wrong size",
        encode({"type": "reset", "instruction_embedding": _array(np.float32, (100,))}),
        "instruction_embedding must be float32 (512,)",
    ),
    (
        "embedding of the wrong dtype",
        encode({"type": "reset", "instruction_embedding": _array(np.float64, (512,))}),
        "instruction_embedding must be float32 (512,), got float64",
    ),
    (
        "both text and embedding",
        encode(
            {"type": "reset", "instruction": "pick coke can", "instruction_embedding": pack_array(EMBEDDING)}
        ),
        "exactly one of",
    ),
    ("empty text", encode({"type": "reset", "instruction": " "}), "non-empty text"),
    (
        "bad cond_scale",
        encode({"type": "reset", "instruction": "pick coke can", "cond_scale": float("nan")}),
        "cond_scale must be a finite number",
    ),
    ("no image", _act(natural_language_embedding=pack_array(EMBEDDING)), "the observation has no image"),
    ("float image", _act(image=_array(np.float32, IMAGE_SHAPE)), "must be uint8 (H, W, 3)"),
    ("grey image", _act(image=_array(np.uint8, (256, 320))), "got uint8 (256, 320)"),
    ("4-channel image", _act(image=_array(np.uint8, (256, 320, 4))), "got uint8 (256, 320, 4)"),
    (
        "data of the wrong length",
        _act(image=_array(np.uint8, IMAGE_SHAPE, b"\x00" * 100)),
        "100 data bytes do not make a |u1 array of shape [256, 320, 3]",
    ),
    ("unknown dtype", _act(image={"dtype": "O", "shape": [1], "data": b"x"}), "dtype 'O' is not one of"),
    ("array as a list", _act(image=[[1, 2, 3]]), "observation/image must be an array map"),
    (
        "unknown observation key",
        _act(image=pack_array(IMAGE), depth=pack_array(IMAGE)),
        "unknown observation key(s) ['depth']",
    ),
    (
        "state vector of the wrong shape",
        _act(image=pack_array(IMAGE), gripper_closed=_array(np.float32, (2,))),
        "observation/gripper_closed must be float32 (1,)",
    ),
    (
        "another instruction mid-episode",
        _act(image=pack_array(IMAGE), natural_language_embedding=pack_array(-EMBEDDING)),
        "is not the episode's instruction",
    ),
    (
        "oversized frame",
        encode({"type": "info", "padding": b"\x00" * (LIMIT + 1000)}),
        f"over the limit of {LIMIT}",
    ),
]


def test_bad_messages_get_error_replies_and_the_session_goes_on(server, in_process):
    episode = make_episode(4, "pick coke can")
    want, _ = expected_actions(in_process, episode)
    with PolicyClient(server, timeout=60) as client:
        with pytest.raises(ServerError, match="act before reset"):
            client.act({"image": IMAGE})
        client.reset(instruction_embedding=EMBEDDING)
        got = [client.act(episode[0]), client.act(episode[1])]
        kinds = set()
        for kind, frame, expected in BAD_MESSAGES:
            with pytest.raises(ServerError) as info:
                client.request_raw(frame)
            assert expected in str(info.value), kind
            kinds.add(kind)
        assert len(kinds) >= 10
        # the episode goes on where it was: step 3 is the in-process step 3
        got += [client.act(obs) for obs in episode[2:]]
        assert client.info()["type"] == "info"
    assert_same_actions(got, want)
    # and a new connection still gets a good episode
    with PolicyClient(server, timeout=60) as client:
        client.reset(instruction_embedding=EMBEDDING)
        assert_same_actions([client.act(obs) for obs in episode[:2]], want[:2])


def _sessions(uri) -> int:
    with PolicyClient(uri, timeout=60) as probe:
        return probe.info()["sessions"] - 1  # not counting the probe


def _wait_for_no_sessions(uri, seconds: float = 30.0) -> int:
    deadline = time.monotonic() + seconds
    while (count := _sessions(uri)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def test_a_client_that_disconnects_mid_episode_frees_its_session(server):
    assert _wait_for_no_sessions(server) == 0  # earlier tests' sessions are gone
    clients = [PolicyClient(server, timeout=60) for _ in range(2)]
    for client in clients:
        client.reset(instruction_embedding=EMBEDDING)
        client.act({"image": IMAGE})
    assert _sessions(server) == 2
    clients[0]._ws.socket.close()  # gone without a close frame: a robot losing power
    clients[1]._ws.close()  # a WebSocket close without the protocol's "close" request
    assert _wait_for_no_sessions(server) == 0


def test_sigterm_stops_the_server_cleanly(exported):
    with local_server(exported) as (uri, proc):
        client = PolicyClient(uri, timeout=60)
        client.reset(instruction_embedding=EMBEDDING)
        client.act({"image": IMAGE})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.lines.get(timeout=10).startswith("stopped on signal 15")
        with pytest.raises(ServerError):
            client.act({"image": IMAGE})


def test_closed_loop_evaluation_through_the_server_equals_in_process(server, exported, tmp_path, capsys):
    from rt1.evaluation.closed_loop_cli import main

    common = ["--episodes", "2", "--task-family", "pick", "knock_over", "--max-steps", "12", "--seed", "5"]
    assert main(["--server", server, *common, "--out", str(tmp_path / "served")]) == 0
    assert (
        main(["--checkpoint", str(exported), "--threads", "1", *common, "--out", str(tmp_path / "local")])
        == 0
    )
    capsys.readouterr()
    served = json.loads((tmp_path / "served" / "results.json").read_text())
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    for name in ("policy", "expert", "noop"):
        assert served[name]["episodes"] == local[name]["episodes"], name
    assert served["settings"]["server"] == server and served["settings"]["jpeg_quality"] == 90
    assert (
        max(e["steps"] for e in served["policy"]["episodes"]) > 1
    )  # the policy acted for more than one step


class _Recording:
    """Wraps a closed-loop policy and keeps every action it gives."""

    def __init__(self, policy, actions: list):
        self.policy, self.actions = policy, actions

    def reset(self):
        self.policy.reset()

    def __call__(self, obs):
        action = self.policy(obs)
        self.actions.append(action)
        return action


def test_closed_loop_actions_through_the_server_are_the_in_process_ones(server, in_process, exported):
    from rt1.evaluation.closed_loop import evaluate_policy
    from rt1.serve import ServedEnvPolicy

    served, local = [], []
    with PolicyClient(server, timeout=60) as client:
        evaluate_policy(
            lambda env: _Recording(ServedEnvPolicy(client), served),
            2,
            ["pick", "open_drawer"],
            seed=7,
            max_steps=10,
        )
    evaluate_policy(
        lambda env: _Recording(RT1EnvPolicy(in_process), local),
        2,
        ["pick", "open_drawer"],
        seed=7,
        max_steps=10,
    )
    assert len(served) > 2
    assert_same_actions(served, local)


def test_cli_help_and_one_line_errors(tmp_path, capsys):
    from rt1.evaluation.closed_loop_cli import main as eval_main
    from rt1.serve import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--max-message-bytes" in capsys.readouterr().out
    assert main(["--model", str(tmp_path / "nope.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint {tmp_path / 'nope.pt'} does not exist"
    # nothing listens on port 9 of 127.0.0.1 (discard): a one-line connection error, exit 2
    assert eval_main(["--server", "ws://127.0.0.1:9", "--episodes", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: cannot connect to policy server ws://127.0.0.1:9")
        and len(err.splitlines()) == 1
    )


def test_inference_does_not_block_other_connections(exported, monkeypatch):
    """While one session's step is held in the worker thread, another connection is answered."""
    import asyncio

    from rt1.serve import PolicyServer, Session

    gate, started = threading.Event(), threading.Event()
    act = Session.act

    def held_act(self, observation):
        started.set()
        assert gate.wait(60), "the test never released the step"
        return act(self, observation)

    monkeypatch.setattr(Session, "act", held_act)
    server = PolicyServer(exported, threads=1)

    async def scenario():
        stop = asyncio.get_running_loop().create_future()
        ports: list[int] = []
        serving = asyncio.create_task(server.serve("127.0.0.1", 0, ready=ports.append, stop=stop))
        for _ in range(600):
            if ports:
                break
            await asyncio.sleep(0.05)
        uri = f"ws://127.0.0.1:{ports[0]}"

        def held_client():
            with PolicyClient(uri, timeout=60) as client:
                client.reset(instruction_embedding=EMBEDDING)
                return client.act({"image": IMAGE})

        def other_client():
            assert started.wait(60)
            with PolicyClient(uri, timeout=10) as client:
                info = client.info()
                client.reset(instruction_embedding=EMBEDDING)  # a reset needs no worker: answered too
            return info, gate.is_set()

        held = asyncio.create_task(asyncio.to_thread(held_client))
        info, released = await asyncio.to_thread(other_client)
        assert not released and not held.done() and info["sessions"] == 2
        gate.set()
        action = await asyncio.wait_for(held, 60)
        stop.set_result(0)
        await asyncio.wait_for(serving, 30)
        return action

    action = asyncio.run(scenario())
    assert set(action) == {
        "world_vector",
        "rotation_delta",
        "gripper_closedness_action",
        "base_displacement_vector",
        "base_displacement_vertical_rotation",
        "terminate_episode",
    }


def test_the_client_imports_without_torch():
    import subprocess
    import sys

    from conftest import REPO

    code = "import sys\nimport rt1.serve\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
