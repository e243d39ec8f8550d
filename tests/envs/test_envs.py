"""Environments, experts and demonstrations on the real simulators (LIBERO via MuJoCo, BabyAI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

os.environ.setdefault("MUJOCO_GL", "egl")

from envs import EnvNameError, make_env, make_expert, parse_env_name  # noqa: E402
from envs.babyai_env import MissionInfo, doors_needed_next  # noqa: E402
from envs.libero_env import LiberoError, suite_max_steps  # noqa: E402
from envs.recording import RecordSettings, read_episode, record  # noqa: E402

pytestmark = pytest.mark.simulator  # every test here builds LIBERO or BabyAI

BABYAI_LEVELS = ["BabyAI-GoToSeqS5R2-v0", "BabyAI-PickupLoc-v0", "BabyAI-GoToLocal-v0"]


@pytest.fixture(scope="module")
def libero_state_only():
    env = make_env("libero:libero_spatial/0", render="none")
    yield env
    env.close()


def run_expert(env, expert, **reset_kwargs) -> dict:
    obs, info = env.reset(**reset_kwargs)
    expert.reset()
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            return info


# -- BabyAI ------------------------------------------------------------------------------------------
def test_babyai_passes_check_env() -> None:
    env = make_env("babyai:BabyAI-PickupLoc-v0", image_size=56)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (56, 56, 3) and obs["image"].std() > 0
    assert info["instruction"] == obs["instruction"] and "num_subgoals" in info


@pytest.mark.parametrize("level", BABYAI_LEVELS)
def test_babyai_bot_succeeds(level: str) -> None:
    env = make_env(f"babyai:{level}", image_size=28)
    expert = make_expert(env)
    results = [run_expert(env, expert, seed=seed)["success"] for seed in range(5)]
    assert all(results), results


@pytest.mark.parametrize("keep_opened_doors", [False, True])
def test_babyai_bot_closes_a_wrongly_opened_door_unless_told_to_keep_it(keep_opened_doors: bool) -> None:
    """A learner (DAgger) opens a door the mission does not need: the stock bot's next label closes it
    (toggle); with ``keep_opened_doors`` it replans and heads on."""
    env = make_env("babyai:BabyAI-OpenDoorsOrderN4-v0", image_size=28)
    obs, _ = env.reset(seed=1)
    world = env.unwrapped_env
    needed = {id(door) for door in doors_needed_next(world.instrs)}
    door = next(c for c in world.grid.grid if c is not None and c.type == "door" and id(c) not in needed)
    from minigrid.core.constants import DIR_TO_VEC

    for direction, (dx, dy) in enumerate(DIR_TO_VEC):  # noqa: B007  (the direction that breaks is used below)
        spot = (door.cur_pos[0] - dx, door.cur_pos[1] - dy)
        if world.grid.get(*spot) is None and world.room_from_pos(*spot) is world.get_room(1, 1):
            break
    world.agent_pos, world.agent_dir = np.array(spot), direction
    expert = make_expert(env, keep_opened_doors=keep_opened_doors)
    expert.reset()
    expert.act(obs)
    obs, *_ = env.step(world.actions.toggle)  # the learner opens the wrong door
    assert door.is_open
    label = expert.act(obs, world.actions.toggle)
    assert (label == world.actions.toggle) == (not keep_opened_doors)


def test_babyai_generation_noise_stays_out_of_stdout(capfd) -> None:
    env = make_env("babyai:BabyAI-PickupLoc-v0")
    for seed in range(20):
        env.reset(seed=seed)
    assert capfd.readouterr().out == ""


def test_mission_metadata() -> None:
    assert MissionInfo.from_mission("pick up the red ball in front of you") == MissionInfo(True, 1, "single")
    assert MissionInfo.from_mission("go to the red ball and go to a key, then open a door") == MissionInfo(
        False, 3, "then"
    )
    assert MissionInfo.from_mission("open the red door after you open the blue door") == MissionInfo(False, 2, "after")
    assert MissionInfo.from_mission("go to the box and go to a key") == MissionInfo(False, 2, "and")


# -- LIBERO ------------------------------------------------------------------------------------------
def test_libero_smoke_check() -> None:
    libero_pro = os.path.join(os.path.dirname(sys.executable), "libero-pro")
    out = subprocess.run(
        [libero_pro, "smoke", "--suite", "libero_spatial", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout[out.stdout.index("{") :])
    assert report["render"] and report["observations"]["agentview_image"] == [128, 128, 3]


def test_libero_passes_check_env(libero_state_only) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded proprio is fine
        check_env(libero_state_only, skip_render_check=True)
    assert libero_state_only.max_steps == 220


def test_libero_expert_succeeds_without_rendering(libero_state_only) -> None:
    expert = make_expert(libero_state_only)
    for state in (0, 7):
        info = run_expert(libero_state_only, expert, options={"init_state": state})
        assert info["success"] and info["init_state"] == state


def test_libero_expert_takes_the_bowl_out_of_the_open_drawer() -> None:
    """libero_spatial task 4: the bowl starts in the open top drawer, so the expert uses the crowded
    grasp (rim on the far side, fingers closing along x) that keeps the fingers off the drawer walls."""
    from envs.experts.libero_expert import starts_crowded

    env = make_env("libero:libero_spatial/4", render="none")
    try:
        expert = make_expert(env)
        info = run_expert(env, expert, options={"init_state": 0})
        assert starts_crowded(env, "akita_black_bowl_1") and info["success"]
    finally:
        env.close()
    plain = make_env("libero:libero_spatial/9", render="none")  # on the cabinet's top: a fixture's surface
    try:
        plain.reset(options={"init_state": 0})
        assert not starts_crowded(plain, "akita_black_bowl_1")
    finally:
        plain.close()


def test_libero_expert_labels_the_state_a_learner_left_it_in(libero_state_only) -> None:
    """As a DAgger labeller (``taken`` given) the expert reads its phase off the state: after ten steps
    of someone else's random pushes mid-approach it still takes the bowl to the plate."""
    expert = make_expert(libero_state_only)
    obs, info = libero_state_only.reset(options={"init_state": 0})
    expert.reset()
    rng, taken = np.random.default_rng(0), None
    for step in range(libero_state_only.max_steps):
        label = expert.act(obs, taken)
        executed = label.copy()
        if 30 <= step < 40:
            executed[:3] = rng.uniform(-1, 1, 3)
        obs, _, terminated, truncated, info = libero_state_only.step(executed)
        taken = executed
        if terminated or truncated:
            break
    assert info["success"]


def test_libero_dagger_writes_learner_episodes_labelled_by_the_expert(tmp_path) -> None:
    """DAgger on LIBERO: a (tiny, untrained) learner acts in chunks, the expert labels every step; the
    episode starts from the requested official state and is written in the demonstration format."""
    from envs.dagger import collect
    from fm_agent.attention import FutureMaskSpec
    from fm_agent.evaluation.inprocess import InProcessActor
    from fm_agent.model import ActionTokenizer, BackboneShape, VLAConfig, VLAPolicy

    rng = np.random.default_rng(0)
    config = VLAConfig(
        env_family="libero",
        cameras=["agentview", "wrist"],
        image_size=16,
        history=2,
        action_tokenizer=ActionTokenizer.fit(rng.uniform(-1, 1, (200, 7)), bins=16, chunk=4).to_dict(),
        proprio_dim=8,
        proprio_low=[-1.0] * 8,
        proprio_high=[1.0] * 8,
        backbone=BackboneShape(
            hidden=32,
            layers=1,
            heads=2,
            kv_heads=1,
            intermediate=64,
            vision_hidden=16,
            vision_layers=1,
            vision_heads=2,
            patch_size=8,
        ),
    )
    policy = VLAPolicy.create(config, ["pick up the black bowl"], seed=0)
    calls = []

    def make_actor():
        actor = InProcessActor(policy, FutureMaskSpec(), 0.0)
        act = actor.act
        actor.act = lambda observation: (calls.append(1), act(observation))[1]
        return actor

    name = "libero:libero_spatial/0"
    stats = collect(name, make_actor, tmp_path, 1, 900, 0.0, 12, init_states=[3], env_options={"image_size": 16})
    assert stats["episodes"] == 1 and len(calls) == 3, "asked once per 4-action chunk"
    episode = read_episode(next(tmp_path.rglob("episode_*.h5")))
    assert episode.init_state == 3 and episode.actions.shape == (12, 7) and episode.expert == "dagger:LiberoExpert"
    assert episode.observations["agentview"].shape == (12, 16, 16, 3) and episode.metadata["beta"] == 0.0
    assert np.all(np.abs(episode.actions) <= 1) and np.all(episode.actions[:, 6] == -1.0), "approach: gripper open"
    assert "render_every" not in episode.metadata

    # blind steps: only the learner's query steps render; it reads the same images, so it acts the same
    blind_out = tmp_path / "blind"
    collect(
        name, make_actor, blind_out, 1, 900, 0.0, 12, init_states=[3], env_options={"image_size": 16}, blind_steps=True
    )
    blind = read_episode(next(blind_out.rglob("episode_*.h5")))
    assert blind.metadata["render_every"] == 4
    np.testing.assert_array_equal(blind.actions, episode.actions)
    for camera in ("agentview", "wrist"):
        np.testing.assert_array_equal(blind.observations[camera][::4], episode.observations[camera][::4])
        assert np.array_equal(blind.observations[camera][1], blind.observations[camera][0]), (
            "a blind step keeps the image"
        )


def test_libero_recording_rendered_every_n_steps_keeps_the_rendered_frames() -> None:
    """``render_every`` changes no action and no image at the steps a chunked policy reads."""
    from envs.recording import run_expert_episode

    env = make_env("libero:libero_spatial/0", image_size=16)
    try:
        expert = make_expert(env)
        full = run_expert_episode(env, expert, "libero:libero_spatial/0", 0, 5, 5, max_steps=12)
        sparse = run_expert_episode(env, expert, "libero:libero_spatial/0", 0, 5, 5, max_steps=12, render_every=4)
    finally:
        env.close()
    assert sparse.metadata["render_every"] == 4 and "render_every" not in full.metadata
    np.testing.assert_array_equal(sparse.actions, full.actions)
    for camera in ("agentview", "wrist"):
        np.testing.assert_array_equal(sparse.observations[camera][::4], full.observations[camera][::4])
        assert not np.array_equal(full.observations[camera][0], full.observations[camera][8]), "the arm moved"
        np.testing.assert_array_equal(sparse.observations[camera][3], sparse.observations[camera][0])


def test_render_every_needs_an_env_that_can_skip_rendering() -> None:
    from envs.recording import run_expert_episode

    env = make_env("babyai:BabyAI-GoToLocal-v0", image_size=28)
    with pytest.raises(ValueError, match="cannot skip rendering"):
        run_expert_episode(env, make_expert(env), "babyai:BabyAI-GoToLocal-v0", 0, 0, None, render_every=4)


def test_libero_rendered_rollout_images_are_real() -> None:
    env = make_env("libero:libero_spatial/0", image_size=64)
    try:
        obs, _ = env.reset(options={"init_state": 0})
        expert = make_expert(env)
        expert.reset()
        first = obs
        for _ in range(6):
            obs, *_ = env.step(expert.act(obs))
        for camera in ("agentview", "wrist"):
            assert obs[camera].shape == (64, 64, 3) and obs[camera].dtype == np.uint8
            assert obs[camera].std() > 5, f"{camera} image is constant"
            assert np.abs(obs[camera].astype(int) - first[camera].astype(int)).mean() > 0.5, f"{camera} did not change"
        assert np.abs(obs["agentview"].astype(int) - obs["wrist"].astype(int)).mean() > 10
        assert obs["proprio"].shape == (8,) and np.isfinite(obs["proprio"]).all()
        assert obs["instruction"].startswith("pick")
    finally:
        env.close()


def test_libero_blind_steps_leave_the_read_images_unchanged() -> None:
    """Skipping the cameras inside an action chunk must not change the images the policy does read."""
    env = make_env("libero:libero_spatial/0", image_size=32)
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, (16, 7)).astype(np.float32)
    try:

        def rollout(blind: bool) -> list[np.ndarray]:
            env.reset(options={"init_state": 3}, seed=3)
            read = []
            for i, action in enumerate(actions):
                obs, *_ = env.step(action, render=not (blind and i % 4 != 3))
                if i % 4 == 3:
                    read.append(np.concatenate([obs["agentview"].ravel(), obs["wrist"].ravel()]))
            return read

        always, blind = rollout(False), rollout(True)
        assert all(np.array_equal(a, b) for a, b in zip(always, blind))
        assert not np.array_equal(always[0], always[-1])  # the arm moved: the comparison means something
    finally:
        env.close()


def test_libero_step_rejects_bad_actions(libero_state_only) -> None:
    libero_state_only.reset(options={"init_state": 0})
    with pytest.raises(ValueError, match="7 finite floats"):
        libero_state_only.step(np.zeros(6))
    with pytest.raises(ValueError, match="7 finite floats"):
        libero_state_only.step(np.full(7, np.nan))
    with pytest.raises(LiberoError, match="out of range"):
        libero_state_only.reset(options={"init_state": 50})


def test_suite_step_budgets() -> None:
    assert [
        suite_max_steps(s)
        for s in (
            "libero_spatial",
            "libero_object",
            "libero_goal",
            "libero_10",
            "libero_90",
            "libero_spatial_swap",
            "libero_10_lan",
        )
    ] == [220, 280, 300, 520, 400, 220, 520]


# -- registry ----------------------------------------------------------------------------------------
def test_registry_names_and_errors() -> None:
    assert parse_env_name("libero:libero_spatial/3").task_id == 3
    assert str(parse_env_name("babyai:BabyAI-GoToLocal-v0")) == "babyai:BabyAI-GoToLocal-v0"
    with pytest.raises(EnvNameError, match="expected"):
        parse_env_name("libero_spatial")
    with pytest.raises(EnvNameError, match="task index"):
        parse_env_name("libero:libero_spatial/x")
    with pytest.raises(EnvNameError, match="unknown environment family"):
        parse_env_name("alfred:kitchen")
    with pytest.raises(EnvNameError, match="unknown BabyAI level"):
        make_env("babyai:BabyAI-Nope-v0")
    with pytest.raises(LiberoError, match="unknown LIBERO suite"):
        make_env("libero:libero_nope/0")
    with pytest.raises(LiberoError, match="out of range"):
        make_env("libero:libero_spatial/10")


# -- demonstrations ----------------------------------------------------------------------------------
def test_demos_round_trip_and_resume(tmp_path) -> None:
    settings = RecordSettings(out=tmp_path, image_size=28)
    summary = record(["babyai:BabyAI-GoToSeqS5R2-v0"], 3, settings)
    assert summary["environments"]["babyai:BabyAI-GoToSeqS5R2-v0"]["successes"] == 3
    files = sorted(tmp_path.rglob("*.h5"))
    assert len(files) == 3
    episode = read_episode(files[0])
    env = make_env("babyai:BabyAI-GoToSeqS5R2-v0", image_size=28)
    obs, _ = env.reset(seed=episode.seed)
    assert obs["instruction"] == episode.instruction
    for t, action in enumerate(episode.actions):  # replaying the stored actions reproduces the stored frames
        assert np.array_equal(obs["image"], episode.observations["image"][t])
        obs, _, terminated, _, info = env.step(int(action))
    assert terminated and info["success"] and episode.success
    assert episode.observations["image"].dtype == np.uint8 and episode.actions.dtype.kind == "i"

    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    record(["babyai:BabyAI-GoToSeqS5R2-v0"], 4, settings)  # resume: only episode 3 is new
    new = (tmp_path / "manifest.jsonl").read_text().splitlines()[len(lines) :]
    assert [json.loads(l)["index"] for l in new] == [3]


def test_action_noise_executes_noisy_xyz_and_labels_the_clean_action(libero_state_only) -> None:
    """DART recording: what the simulator executes is the label plus noise on xyz only; the label is
    what the expert commands from the state it is in, so it steers back towards its waypoint."""
    from envs.recording import run_expert_episode

    env, executed = libero_state_only, []
    real_step = env.step

    def spy(action, **kwargs):
        executed.append(np.array(action))
        return real_step(action, **kwargs)

    env.step = spy
    try:
        noisy = run_expert_episode(
            env, make_expert(env), "libero:libero_spatial/0", 0, 7, 0, max_steps=30, action_noise=0.3
        )
        executed_noisy, executed[:] = np.stack(executed), []
        clean = run_expert_episode(env, make_expert(env), "libero:libero_spatial/0", 0, 7, 0, max_steps=30)
    finally:
        del env.step
    difference = executed_noisy - noisy.actions
    assert np.all(np.abs(difference[:, :3]).max(axis=0) > 0.05) and np.all(difference[:, 3:] == 0)
    assert np.array_equal(np.stack(executed), clean.actions)  # without noise, label == executed
    assert noisy.metadata["action_noise"] == 0.3 and "action_noise" not in clean.metadata
    assert not np.allclose(noisy.observations["proprio"], clean.observations["proprio"])


def test_dagger_labels_are_the_bots_and_resume(tmp_path) -> None:
    """With beta = 1 every step executes the bot's label, so a DAgger episode must replay the bot's own
    demonstration exactly; with beta = 0 the (untrained) learner acts and the bot still labels."""
    from envs.dagger import collect
    from envs.recording import run_expert_episode
    from fm_agent.model import ActionTokenizer, BackboneShape, VLAConfig, VLAPolicy

    name = "babyai:BabyAI-OpenDoorsOrderN2-v0"
    config = VLAConfig(
        env_family="babyai",
        cameras=["image"],
        image_size=16,
        history=2,
        action_tokenizer=ActionTokenizer.discrete(7).to_dict(),
        backbone=BackboneShape(
            hidden=32,
            layers=1,
            heads=2,
            kv_heads=1,
            intermediate=64,
            vision_hidden=16,
            vision_layers=1,
            vision_heads=2,
            patch_size=8,
        ),
    )
    policy = VLAPolicy.create(config, ["open the red door", "then after you"], seed=0)
    from fm_agent.attention import FutureMaskSpec
    from fm_agent.evaluation.inprocess import InProcessActor

    greedy = lambda: InProcessActor(policy, FutureMaskSpec(), 0.0)  # noqa: E731
    sampled = lambda: InProcessActor(policy, FutureMaskSpec(), 1.0)  # noqa: E731
    stats = collect(name, greedy, tmp_path / "expert", 2, 500, 1.0, 64)
    assert stats == {"episodes": 2, "learner_successes": 2, "unlabelled_skipped": 0}
    env = make_env(name)
    for index, path in enumerate(sorted((tmp_path / "expert").rglob("episode_*.h5"))):
        episode, demo = read_episode(path), run_expert_episode(env, make_expert(env), name, index, 500 + index, None)
        assert np.array_equal(episode.actions, demo.actions) and episode.instruction == demo.instruction
        assert np.array_equal(episode.observations["image"], demo.observations["image"])

    collect(name, sampled, tmp_path / "learner", 2, 500, 0.0, 12)
    files = sorted((tmp_path / "learner").rglob("episode_*.h5"))
    labels = np.concatenate([read_episode(p).actions for p in files])
    assert len(files) == 2 and labels.min() >= 0 and labels.max() < 7
    assert collect(name, sampled, tmp_path / "learner", 2, 500, 0.0, 12)["episodes"] == 0  # resumed


def test_a_rollout_ends_where_the_expert_gives_up() -> None:
    """BabyAI's bot asserts in some states a learner leads it to; that must end the episode with the
    steps labelled so far, not crash a DAgger collection hours in."""
    from envs.experts import ExpertGaveUp
    from envs.recording import labelled_rollout

    env = make_env("babyai:BabyAI-OpenDoorsOrderN2-v0")
    obs, info = env.reset(seed=3)
    calls = 0

    def decide(observation):
        nonlocal calls
        calls += 1
        if calls == 4:
            raise ExpertGaveUp("no path")
        return 0, 0  # turn left

    frames, labels, rewards, success, info = labelled_rollout(env, obs, info, decide, 50)
    assert len(labels) == 3 and len(frames["image"]) == 3 and len(rewards) == 3 and not success
    assert info["expert_gave_up"] == "no path"

    def give_up(observation):
        raise ExpertGaveUp("lost at once")

    obs, info = env.reset(seed=3)
    frames, labels, _, _, info = labelled_rollout(env, obs, info, give_up, 50)
    assert len(labels) == 0 and frames["image"].shape == (0, *obs["image"].shape) and "expert_gave_up" in info
    assert info["instruction"] == obs["instruction"]  # the reset info survives a rollout of no steps


def test_libero_video_view_is_watchable_and_changes_nothing() -> None:
    """Videos render the camera again at 256 px; the policy's own (small) observations are unchanged."""
    envs = [make_env("libero:libero_spatial/0", image_size=16) for _ in range(2)]
    try:
        observations = []
        for watched, env in enumerate(envs):
            obs, _ = env.reset(options={"init_state": 2})
            seen = []
            for _ in range(3):
                if watched:
                    view = env.render_view("agentview", 256)
                    assert view.shape == (256, 256, 3) and view.dtype == np.uint8 and view.std() > 10
                obs, *_ = env.step(np.array([0.3, 0, 0, 0, 0, 0, -1], np.float32))
                seen.append(obs["agentview"])
            observations.append(seen)
        assert all(np.array_equal(a, b) for a, b in zip(*observations))
    finally:
        for env in envs:
            env.close()


def test_the_catalogue_check_reports_the_instruction_the_env_gives(libero_state_only) -> None:
    from envs.libero_env import LiberoError, check_tasks

    _, info = libero_state_only.reset(options={"init_state": 0})
    suite, task = libero_state_only.suite, libero_state_only.task_id
    assert check_tasks(suite, [task])[task] == info["instruction"]
    with pytest.raises(LiberoError, match="resources are not installed"):
        check_tasks("libero_spatial_temp", [0])


def test_dagger_over_a_libero_suite_writes_each_task_with_blind_steps(tmp_path, capsys) -> None:
    """``fm-agent dagger --suite``: every chosen task, in the demonstration layout, resumable."""
    from paths import REPO

    from fm_agent.cli import main as cli

    argv = ["dagger", "--checkpoint", str(REPO / "checkpoints/libero_spatial"), "--suite", "libero_spatial"]
    argv += ["--tasks", "0", "3", "--episodes", "1", "--max-steps", "8", "--init-states", "0", "--image-size", "64"]
    argv += ["--blind-steps", "--out", str(tmp_path)]
    assert cli(argv) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["env"] == "libero_spatial" and stats["episodes"] == 2
    assert {env: row["episodes"] for env, row in stats["environments"].items()} == {
        "libero:libero_spatial/0": 1,
        "libero:libero_spatial/3": 1,
    }
    files = sorted(tmp_path.rglob("episode_*.h5"))
    assert len(files) == 2
    episodes = [read_episode(f) for f in files]
    assert sorted(e.env for e in episodes) == ["libero:libero_spatial/0", "libero:libero_spatial/3"]
    assert all(e.metadata["render_every"] == 4 and e.num_steps == 8 and e.init_state == 0 for e in episodes)
    stamps = [f.stat().st_mtime_ns for f in files]
    assert cli(argv) == 0, "a rerun resumes"
    assert [f.stat().st_mtime_ns for f in files] == stamps, "nothing is collected twice"
