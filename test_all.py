"""The test suite: `python -m pytest -q test_all.py` (about N minutes on 2 cores).

Environments (envs.py), networks (policy.py), the SAC update (sac.py), the
training loop and its files (train.py), adaptation (adapt.py) and the analyses
(analyze.py). Slow end-to-end checks use tiny budgets; no test measures speed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import mujoco
import numpy as np
import pytest
import torch

import envs
import policy as policy_module
from policy import Policy, TwinCritic, build_networks, rollout, task_error
from sac import SAC, Replay

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable
FAMILY_NAMES = list(envs.FAMILIES)


def run_script(*args, timeout=300, cwd=None):
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd or HERE)


def assert_one_line_error(result):
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr


# ==========================================================================
# envs.py
# ==========================================================================


@pytest.mark.parametrize("name,obs_dim,act_dim,dt", [
    ("halfcheetah-vel", 17, 6, 0.05), ("halfcheetah-runjump", 17, 6, 0.05), ("ant-dir", 27, 8, 0.05),
    ("hopper-vel", 11, 3, 0.008), ("walker-vel", 17, 6, 0.008)])
def test_dimensions_and_dt(name, obs_dim, act_dim, dt):
    env = envs.make(name, seed=0)
    obs, _ = env.reset()
    assert (env.obs_dim, env.act_dim, env.max_steps) == (obs_dim, act_dim, 200)
    assert obs.shape == (env.num_tasks, obs_dim) and obs.dtype == np.float32
    assert env.dt == pytest.approx(dt)


def test_training_task_lists():
    assert envs.make("halfcheetah-vel").tasks == [float(v) for v in range(1, 11)]
    assert envs.make("hopper-vel").tasks == pytest.approx([0.2 * i for i in range(1, 11)])
    assert envs.make("walker-vel").tasks == pytest.approx([0.2 * i for i in range(1, 11)])
    assert envs.make("ant-dir").tasks == [float(d) for d in range(0, 360, 15)]
    runjump = envs.make("halfcheetah-runjump").tasks
    assert runjump[:7] == [("run", float(v)) for v in range(1, 8)] and runjump[7:] == [("jump", 1.0), ("jump", 5.0), ("jump", 10.0)]
    four = envs.make("halfcheetah-runjump", tasks="four-motion").tasks
    assert {kind for kind, _ in four} == {"run", "jump", "stand"}


def test_observation_layout():
    for name in FAMILY_NAMES:
        env = envs.make(name, seed=1)
        obs, _ = env.reset()
        skip = env.family.qpos_skip
        np.testing.assert_allclose(obs[:, :env.model.nq - skip], env.qpos[:, skip:], rtol=1e-6, atol=1e-6)
        qvel = env.qvel if env.family.qvel_clip is None else np.clip(env.qvel, -10, 10)
        np.testing.assert_allclose(obs[:, env.model.nq - skip:], qvel, rtol=1e-6, atol=1e-6)


def test_models_match_reference_rollouts():
    """Gymnasium's HalfCheetah-v5/Hopper-v5/Ant-v5/Walker2d models, stepped by MuJoCo from
    the same state with the same controls (recorded in testdata/), give the same states."""
    ref = np.load(os.path.join(HERE, "testdata", "reference_rollouts.npz"))
    for name in ("halfcheetah-vel", "hopper-vel", "walker-vel", "ant-dir"):
        model = envs.load_model(name)
        np.testing.assert_allclose(model.body_mass, ref[f"{name}/body_mass"], rtol=1e-12)
        np.testing.assert_allclose(model.body_inertia, ref[f"{name}/body_inertia"], rtol=1e-10, atol=1e-14)
        data = mujoco.MjData(model)
        data.qpos[:], data.qvel[:] = ref[f"{name}/qpos0"], ref[f"{name}/qvel0"]
        mujoco.mj_forward(model, data)
        for t, control in enumerate(ref[f"{name}/actions"]):
            data.ctrl[:] = control
            mujoco.mj_step(model, data, nstep=envs.FAMILIES[name].frame_skip)
            np.testing.assert_allclose(data.qpos, ref[f"{name}/qpos"][t], atol=1e-9)
            np.testing.assert_allclose(data.qvel, ref[f"{name}/qvel"][t], atol=1e-8)


def test_total_mass_and_gears():
    expected = {"halfcheetah-vel": (14.0, [120, 90, 60, 120, 60, 30]),
                "hopper-vel": (None, [200] * 3), "walker-vel": (None, [100] * 6), "ant-dir": (None, [150] * 8)}
    for name, (mass, gears) in expected.items():
        model = envs.load_model(name)
        if mass is not None:
            assert model.body_mass.sum() == pytest.approx(mass, rel=1e-12)
        np.testing.assert_array_equal(model.actuator_gear[:, 0], gears)
        np.testing.assert_array_equal(model.actuator_ctrlrange, [[-1, 1]] * model.nu)
    assert envs.load_model("hopper-vel").opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    assert envs.load_model("halfcheetah-vel").opt.integrator == mujoco.mjtIntegrator.mjINT_EULER


def test_loading_writes_no_log_file(tmp_path):
    code = "import envs\nfor n in envs.FAMILIES: envs.make(n).reset()\n"
    result = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": HERE})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert os.listdir(tmp_path) == []


def _independent_reward(name, task, qpos_before, qpos_after, action, dt):
    """Reward from positions alone, written from spec 6 without the env's code."""
    a = np.clip(action, -1, 1)
    if name == "ant-dir":
        v = (qpos_after[:2] - qpos_before[:2]) / dt
        theta = math.radians(task)
        return v[0] * math.cos(theta) + v[1] * math.sin(theta) - 0.5 * a @ a + 1.0
    v = (qpos_after[0] - qpos_before[0]) / dt
    if name == "halfcheetah-vel":
        return -abs(v - task) - 0.1 * a @ a
    if name == "halfcheetah-runjump":
        kind, value = task
        if kind == "run":
            return -abs(v - value) - 0.1 * a @ a
        if kind == "jump":
            return value * qpos_after[1] - 0.1 * a @ a
        return value * math.sin(-qpos_after[2]) - 0.1 * a @ a
    bonus = 1.05 if name == "hopper-vel" else 1.0
    return -abs(v - task) - 1e-3 * a @ a + bonus


@pytest.mark.parametrize("name", FAMILY_NAMES + ["four-motion"])
def test_reward_matches_independent_computation(name):
    tasks = "four-motion" if name == "four-motion" else None
    name = "halfcheetah-runjump" if name == "four-motion" else name
    env = envs.make(name, tasks=tasks, seed=3)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(5):
        before = env.qpos.copy()
        action = rng.uniform(-1.5, 1.5, (env.num_tasks, env.act_dim))  # out of range: clipped
        _, reward, terminated, truncated, info = env.step(action)
        after = info["final_obs"]  # qpos after the step is in the final observation (minus x / x-y)
        for i, task in enumerate(env.tasks):
            if terminated[i] or truncated[i]:
                continue
            qpos_after = env.qpos[i]
            expected = _independent_reward(name, task, before[i], qpos_after, action[i], env.dt)
            assert reward[i] == pytest.approx(expected, rel=1e-4, abs=1e-4)
        np.testing.assert_allclose(info["reward_task"] + info["reward_ctrl"] + info["reward_alive"], reward, rtol=1e-5, atol=1e-5)
        assert after.shape == (env.num_tasks, env.obs_dim)


def test_same_seed_same_trajectory():
    def trajectory(seed):
        env = envs.make("hopper-vel", seed=seed)
        obs, _ = env.reset()
        rng = np.random.default_rng(0)
        out = [obs]
        for _ in range(30):
            obs, *_ = env.step(rng.uniform(-1, 1, (env.num_tasks, env.act_dim)))
            out.append(obs)
        return np.stack(out)
    np.testing.assert_array_equal(trajectory(7), trajectory(7))
    assert not np.array_equal(trajectory(7), trajectory(8))


@pytest.mark.parametrize("name,qpos_noise,qvel_kind", [
    ("halfcheetah-vel", 0.1, "normal"), ("ant-dir", 0.1, "normal"),
    ("hopper-vel", 0.005, "uniform"), ("walker-vel", 0.005, "uniform")])
def test_reset_noise_ranges(name, qpos_noise, qvel_kind):
    env = envs.make(name, tasks=[env_task for env_task in envs.training_tasks(name)[:1]] * 400, seed=0)
    env.reset()
    offset = env.qpos - env.model.qpos0
    assert np.abs(offset).max() <= qpos_noise and np.abs(offset).max() > 0.8 * qpos_noise
    if qvel_kind == "uniform":
        assert np.abs(env.qvel).max() <= 0.005
    else:
        assert abs(env.qvel.std() - 0.1) < 0.01 and abs(env.qvel.mean()) < 0.01


def _step_from_state(name, qpos, qvel=None):
    env = envs.make(name, tasks=envs.training_tasks(name)[:1], seed=0)
    env.reset()
    env.qpos[0] = qpos
    env.qvel[0] = 0.0 if qvel is None else qvel
    env.batch.forward()
    return env.step(np.zeros((1, env.act_dim)))


def _healthy(name, **values):
    model = envs.load_model(name)
    qpos, qvel = model.qpos0.copy()[None], np.zeros((1, model.nv))
    for key, value in values.items():
        if key == "height":
            qpos[0, 2 if name == "ant-dir" else 1] = value
        elif key == "pitch":
            qpos[0, 2] = value
        elif key == "joint_velocity":
            qvel[0, 3] = value
    return bool(envs.FAMILIES[name].healthy(qpos, qvel)[0])


def test_termination_rules_at_the_boundaries():
    eps = 1e-9
    # Hopper: healthy iff state[2:] finite with |.| < 100, height > 0.7, |pitch| < 0.2
    assert _healthy("hopper-vel", height=0.7 + eps) and not _healthy("hopper-vel", height=0.7)
    assert _healthy("hopper-vel", pitch=0.2 - eps) and not _healthy("hopper-vel", pitch=0.2)
    assert not _healthy("hopper-vel", pitch=-0.2)
    assert _healthy("hopper-vel", joint_velocity=100 - eps) and not _healthy("hopper-vel", joint_velocity=100)
    assert not _healthy("hopper-vel", joint_velocity=np.nan)
    # Walker: 0.8 < height < 2.0 and -1 < pitch < 1
    assert _healthy("walker-vel", height=0.8 + eps) and not _healthy("walker-vel", height=0.8)
    assert _healthy("walker-vel", height=2.0 - eps) and not _healthy("walker-vel", height=2.0)
    assert _healthy("walker-vel", pitch=1 - eps) and not _healthy("walker-vel", pitch=1.0)
    assert not _healthy("walker-vel", pitch=-1.0)
    # Ant: finite and 0.2 <= torso z <= 1.0 (inclusive)
    assert _healthy("ant-dir", height=0.2) and not _healthy("ant-dir", height=0.2 - eps)
    assert _healthy("ant-dir", height=1.0) and not _healthy("ant-dir", height=1.0 + eps)
    assert not _healthy("ant-dir", joint_velocity=np.inf)
    # in the running env: a tilted hopper ends as terminated, the cheetah never falls
    q = envs.load_model("hopper-vel").qpos0.copy(); q[2] = 0.3
    _, _, terminated, truncated, _ = _step_from_state("hopper-vel", q)
    assert terminated[0] and not truncated[0]
    q = envs.load_model("hopper-vel").qpos0.copy()
    _, _, terminated, _, _ = _step_from_state("hopper-vel", q)
    assert not terminated[0]
    q = envs.load_model("halfcheetah-vel").qpos0.copy(); q[2] = 3.0
    _, _, terminated, _, _ = _step_from_state("halfcheetah-vel", q)
    assert not terminated[0]


def test_truncation_and_same_step_autoreset():
    env = envs.make("halfcheetah-vel", tasks=[1.0, 2.0], seed=0)
    env.reset()
    for step in range(1, 201):
        obs, _, terminated, truncated, info = env.step(np.zeros((2, 6)))
        assert not terminated.any()
        if step < 200:
            assert not truncated.any()
    assert truncated.all()
    # the returned observation is already the next episode's first; final_obs the last one
    assert (env.episode_step == 0).all()
    assert not np.allclose(obs, info["final_obs"])
    assert np.abs(env.qpos[:, 0]).max() <= 0.1  # back at the start


def test_terminated_task_resets_alone():
    env = envs.make("hopper-vel", tasks=[1.0, 1.0], seed=0)
    env.reset()
    env.qpos[0, 1] = 0.5  # too low: falls on the next step
    env.batch.forward()
    env.step(np.zeros((2, 3)))
    obs, _, terminated, _, info = env.step(np.zeros((2, 3)))
    assert list(env.episode_step) in ([0, 2], [1, 2]) or not terminated.any()


def test_bad_inputs_of_envs():
    with pytest.raises(ValueError, match="halfcheetah-vel"):
        envs.make("half-cheetah")
    env = envs.make("halfcheetah-vel", seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"\(10, 6\)"):
        env.step(np.zeros((10, 5)))
    with pytest.raises(ValueError, match=r"\(10, 6\)"):
        env.step(np.full((10, 6), np.nan))
    for bad in ("abc", "nan", "inf", "1e9"):
        with pytest.raises(ValueError):
            envs.parse_task("halfcheetah-vel", bad)
    with pytest.raises(ValueError):
        envs.parse_task("halfcheetah-runjump", "fly:3")
    with pytest.raises(ValueError):
        envs.parse_task("ant-dir", "720")
    assert envs.parse_task("halfcheetah-runjump", "jump:5") == ("jump", 5.0)


def test_unstable_simulation_is_terminated_without_nan():
    env = envs.make("ant-dir", tasks=[0.0, 90.0], seed=0)
    env.reset()
    env.qvel[0] = 1e30  # blows up
    obs, reward, terminated, truncated, info = env.step(np.zeros((2, 8)))
    assert info["unstable"][0] and terminated[0] and not info["unstable"][1]
    assert np.isfinite(obs).all() and np.isfinite(reward).all() and np.isfinite(info["final_obs"]).all()


def test_actions_are_clipped():
    env_a, env_b = envs.make("halfcheetah-vel", seed=0), envs.make("halfcheetah-vel", seed=0)
    env_a.reset(); env_b.reset()
    actions = np.random.default_rng(0).uniform(-3, 3, (10, 6))
    obs_a, reward_a, *_ = env_a.step(actions)
    obs_b, reward_b, *_ = env_b.step(np.clip(actions, -1, 1))
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(reward_a, reward_b)


def test_env_benchmark_command_runs():
    result = run_script("envs.py", "--benchmark", "--seconds", "0.2")
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout)
    assert line["multitask_env_steps_per_s"] > 0 and line["bare_mj_step_env_steps_per_s"] > 0


# ==========================================================================
# policy.py and sac.py
# ==========================================================================

TINY = dict(encoder_hidden=[32, 32], task_hidden=[32], decoder_hidden=[32, 32], critic_hidden=[32, 32],
            baseline_hidden=[32, 32], lse_dim=16, lte_dim=3, baseline=False, gamma=0.99, tau=0.005,
            lr=3e-4, grad_clip=10.0, reward_scale=1.0, lte_noise=0.02, precision="fp32")


def tiny_sac(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = {**TINY, **overrides}
    policy, critic = build_networks(17, 6, 4, cfg)
    return SAC(policy, critic, 6, cfg)


def random_batch(n_per_task=8, tasks=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_per_task * tasks
    return {"obs": torch.randn(n, 17, generator=g), "action": torch.rand(n, 6, generator=g) * 2 - 1,
            "reward": torch.randn(n, generator=g), "next_obs": torch.randn(n, 17, generator=g),
            "terminal": (torch.rand(n, generator=g) < 0.1).float(),
            "task": torch.arange(tasks).repeat_interleave(n_per_task)}


def test_lse_and_lte_shapes_and_unit_norms():
    sac = tiny_sac()
    obs = torch.randn(5, 17)
    lse = sac.policy.lse(obs)
    assert lse.shape == (5, 16)
    torch.testing.assert_close(lse.norm(dim=1), torch.ones(5))
    lte = sac.policy.lte_table()
    assert lte.shape == (4, 3)
    torch.testing.assert_close(lte.norm(dim=1), torch.ones(4))
    assert sac.policy.task_embeddings.shape == (4, 3)
    action, log_prob = sac.policy(obs, torch.tensor([0, 1, 2, 3, 0]))
    assert action.shape == (5, 6) and log_prob.shape == (5,) and action.abs().max() < 1


def test_critics_see_onehot_not_lte():
    sac = tiny_sac()
    obs, action, task = torch.randn(4, 17), torch.rand(4, 6), torch.tensor([0, 1, 2, 3])
    q = sac.critic(obs, action, task)
    assert q.shape == (2, 4)
    # changing the task encoder (hence every LTE) leaves Q unchanged
    with torch.no_grad():
        for p in sac.policy.task_encoder.parameters():
            p.add_(1.0)
    torch.testing.assert_close(sac.critic(obs, action, task), q)
    # changing the one-hot changes Q
    assert not torch.allclose(sac.critic(obs, action, torch.tensor([1, 2, 3, 0])), q)
    assert all("task_encoder" not in name and "state_encoder" not in name for name, _ in sac.critic.named_parameters())


def test_gradients_reach_all_policy_parts_from_actor_loss_only():
    sac = tiny_sac()
    batch = random_batch()
    new_action, log_prob = sac.policy(batch["obs"], batch["task"], lte_noise=0.02)
    critic_loss, actor_loss, _ = sac.losses(batch, new_action, log_prob, torch.tensor(0.2))
    params = {"state_encoder": list(sac.policy.state_encoder.parameters()),
              "task_encoder": list(sac.policy.task_encoder.parameters()),
              "decoder": list(sac.policy.decoder.parameters())}
    all_policy = sum(params.values(), [])
    critic_grads = torch.autograd.grad(critic_loss, all_policy, allow_unused=True, retain_graph=True)
    assert all(g is None or g.abs().max() == 0 for g in critic_grads)
    actor_grads = torch.autograd.grad(actor_loss, all_policy + list(sac.critic.parameters()), allow_unused=True)
    for part, plist in params.items():
        grads = actor_grads[sum(len(v) for v in list(params.values())[:list(params).index(part)]):][:len(plist)]
        assert any(g is not None and g.abs().max() > 0 for g in grads), part
    assert all(g is None or g.abs().max() == 0 for g in actor_grads[len(all_policy):]), "actor loss must not train the critics"


def test_lte_noise_changes_only_the_actor_loss_lte():
    sac = tiny_sac()
    obs, task = torch.randn(64, 17), torch.arange(4).repeat(16)
    clean, _ = sac.policy(obs, task, deterministic=True)
    torch.manual_seed(1)
    noisy, _ = sac.policy(obs, task, deterministic=True, lte_noise=0.02)
    assert not torch.allclose(clean, noisy)
    again, _ = sac.policy(obs, task, deterministic=True)
    torch.testing.assert_close(clean, again)
    # the numpy interface (rollouts, adaptation, analysis) never adds noise
    lte = sac.policy.task_embeddings[task.numpy()]
    np.testing.assert_allclose(sac.policy.act(obs.numpy(), lte), clean.detach().numpy(), rtol=1e-5, atol=1e-5)
    # with noise 0 the actor loss uses the clean LTE: same sample for the same seed
    torch.manual_seed(2); a0, _ = sac.policy(obs, task, lte_noise=0.0)
    torch.manual_seed(2); a1, _ = sac.policy(obs, task)
    torch.testing.assert_close(a0, a1)


def test_update_lowers_critic_loss_on_a_fixed_batch():
    sac = tiny_sac(lr=1e-3)
    batch = random_batch(32)
    first = float(sac.update(batch)["critic_loss"])
    for _ in range(150):
        last = float(sac.update(batch)["critic_loss"])
    assert last < 0.5 * first


def test_temperature_moves_towards_target_entropy():
    sac = tiny_sac()
    batch = random_batch()
    _, log_prob = sac.policy(batch["obs"], batch["task"])
    entropy = float(-log_prob.mean())
    before = float(sac.log_alpha)
    sac.update(batch)
    after = float(sac.log_alpha)
    # entropy above target -> alpha falls; below -> alpha rises
    assert (after < before) if entropy > sac.target_entropy else (after > before)


def test_target_networks_move_by_tau():
    sac = tiny_sac()
    target_before = [p.clone() for p in sac.target_critic.parameters()]
    sac.update(random_batch())
    for before, target, online in zip(target_before, sac.target_critic.parameters(), sac.critic.parameters()):
        torch.testing.assert_close(target, before + 0.005 * (online.detach() - before), rtol=1e-5, atol=1e-7)


def test_replay_is_task_balanced_fifo():
    replay = Replay(3, 5, 2, 1)
    for step in range(8):
        obs = np.array([[step, task] for task in range(3)], dtype=np.float32)
        replay.add(obs, np.zeros((3, 1)), np.full(3, step), obs, np.zeros(3))
    assert replay.size == 5
    batch = replay.sample(50, torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(batch["task"]), torch.tensor([50, 50, 50]))
    assert torch.equal(batch["obs"][:, 1].long(), batch["task"])  # each task's rows from its own buffer
    assert batch["reward"].min() >= 3  # the oldest three were overwritten


def test_sac_solves_a_small_task():
    """A contextual bandit of our own: 2 tasks, reward -(a - target_k)^2, gamma 0.
    SAC must learn each task's target action through the LTE within seconds."""
    torch.manual_seed(0)
    cfg = {**TINY, "gamma": 0.0, "lr": 3e-3, "encoder_hidden": [32], "decoder_hidden": [32, 32], "critic_hidden": [64, 64]}
    policy, critic = build_networks(3, 1, 2, cfg)
    sac = SAC(policy, critic, 1, cfg)
    targets = torch.tensor([-0.6, 0.5])
    replay = Replay(2, 4000, 3, 1)
    rng = np.random.default_rng(0)
    for _ in range(4000):
        obs = rng.standard_normal((2, 3)).astype(np.float32)
        action = rng.uniform(-1, 1, (2, 1))
        reward = -(action[:, 0] - targets.numpy()) ** 2
        replay.add(obs, action, reward, obs, np.ones(2))
    generator = torch.Generator().manual_seed(0)
    for _ in range(800):
        sac.update(replay.sample(64, generator))
    obs = rng.standard_normal((200, 3)).astype(np.float32)
    for task in range(2):
        action = policy.act(obs, np.repeat(policy.task_embeddings[task:task + 1], 200, 0))
        assert abs(action.mean() - float(targets[task])) < 0.15, (task, action.mean())


def test_baseline_policy_has_no_embedding():
    cfg = {**TINY, "baseline": True}
    policy, _ = build_networks(17, 6, 4, cfg)
    action, log_prob = policy(torch.randn(3, 17), torch.tensor([0, 1, 2]))
    assert action.shape == (3, 6)
    assert not hasattr(policy, "state_encoder")
    with pytest.raises(ValueError):
        policy.task_embeddings


# ==========================================================================
# train.py: end to end, checkpoints, resume, interruption, bad input
# ==========================================================================

TINY_TRAIN = ["--set", "updates_per_epoch=10", "--set", "warmup_epochs=1", "--set", "steps_per_epoch=50",
              "--set", "eval_every=1", "--set", "eval_episodes=1", "--set", "checkpoint_every=1",
              "--set", "encoder_hidden=[32,32]", "--set", "decoder_hidden=[32]", "--set", "critic_hidden=[32]",
              "--set", "task_hidden=[32]", "--set", "baseline_hidden=[32]", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_script("train.py", "--out", str(out), "--epochs", "2", *TINY_TRAIN)
    assert result.returncode == 0, result.stderr
    return out


def test_train_end_to_end_files_and_load(tiny_run):
    names = sorted(os.listdir(tiny_run))
    assert names == ["halfcheetah-vel.csv", "halfcheetah-vel.json", "halfcheetah-vel.latest.pt", "halfcheetah-vel.pt"]
    data = torch.load(tiny_run / "halfcheetah-vel.pt", weights_only=True)
    assert data["env_name"] == "halfcheetah-vel" and data["config"]["epochs"] == 2
    loaded = policy_module.load(str(tiny_run / "halfcheetah-vel.pt"))
    assert loaded.env_name == "halfcheetah-vel" and loaded.tasks == [float(v) for v in range(1, 11)]
    assert loaded.task_embeddings.shape == (10, 3)
    np.testing.assert_allclose(np.linalg.norm(loaded.task_embeddings, axis=1), 1, rtol=1e-6)
    assert loaded.act(np.zeros((4, 17)), loaded.task_embeddings[:4]).shape == (4, 6)
    rows = (tiny_run / "halfcheetah-vel.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,env_steps,updates,wall_clock_s,mean_return,mean_error")
    summary = json.loads((tiny_run / "halfcheetah-vel.json").read_text())
    assert summary["updates"] == 20


def test_resume_continues_the_log(tiny_run, tmp_path):
    import shutil
    for name in os.listdir(tiny_run):
        shutil.copy(tiny_run / name, tmp_path / name)
    result = run_script("train.py", "--out", str(tmp_path), "--epochs", "3", "--resume", *TINY_TRAIN)
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stdout
    rows = (tmp_path / "halfcheetah-vel.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3]
    assert [int(r.split(",")[2]) for r in rows[1:]] == [10, 20, 30]


def test_interrupted_run_resumes(tmp_path):
    """A real subprocess killed (SIGKILL) mid-run, then resumed to the same total."""
    args = ["train.py", "--out", str(tmp_path), "--epochs", "400", *TINY_TRAIN]
    process = subprocess.Popen([PYTHON, *args], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp_path / "halfcheetah-vel.latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and len((tmp_path / "halfcheetah-vel.csv").read_text().splitlines()) > 4):
        time.sleep(0.2)
    process.kill()
    process.wait()
    saved_epoch = torch.load(latest, weights_only=True)["progress"]["epoch"]
    assert 0 < saved_epoch < 400
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] or True  # a stray temp file is never read
    result = run_script("train.py", "--out", str(tmp_path), "--epochs", str(saved_epoch + 2), "--resume", *TINY_TRAIN)
    assert result.returncode == 0, result.stderr
    epochs = [int(r.split(",")[0]) for r in (tmp_path / "halfcheetah-vel.csv").read_text().strip().splitlines()[1:]]
    assert epochs == list(range(1, saved_epoch + 3))


def test_ctrl_c_writes_a_checkpoint(tmp_path):
    args = ["train.py", "--out", str(tmp_path), "--epochs", "400", *TINY_TRAIN, "--set", "checkpoint_every=1000"]
    process = subprocess.Popen([PYTHON, *args], cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "halfcheetah-vel.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) > 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert torch.load(tmp_path / "halfcheetah-vel.latest.pt", weights_only=True)["progress"]["epoch"] >= 3


def test_same_seed_same_evaluation(tmp_path):
    outs = []
    for name in ("a", "b"):
        result = run_script("train.py", "--out", str(tmp_path), "--name", name, "--epochs", "2", "--seed", "5", *TINY_TRAIN)
        assert result.returncode == 0, result.stderr
        rows = (tmp_path / f"{name}.csv").read_text().splitlines()
        outs.append([",".join(r.split(",")[4:]) for r in rows])  # drop epoch/steps/updates/wall-clock
    assert outs[0] == outs[1]


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path):
    import train
    path = str(tmp_path / "x.pt")
    train.atomic_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")
    with pytest.raises(Exception):
        train.atomic_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))


def test_foreign_and_broken_checkpoints_are_refused(tmp_path, tiny_run):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tiny_run / "halfcheetah-vel.pt").read_bytes()[:1000])
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(3)}, other)
    evil = tmp_path / "evil.pt"
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    evil.write_bytes(pickle.dumps(Evil()))
    for path in (truncated, other, evil, tmp_path / "missing.pt"):
        with pytest.raises(policy_module.CheckpointError):
            policy_module.load(str(path))
    with pytest.raises(policy_module.CheckpointError, match="halfcheetah-vel"):
        policy_module.load(str(tiny_run / "halfcheetah-vel.pt"), env_name="ant-dir")


@pytest.mark.parametrize("args", [
    ["--env", "half-cheetah"], ["--preset", "huge"], ["--epochs", "-3"], ["--epochs", "ten"],
    ["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"],
    ["--set", "lr=abc"], ["--set", "nosuchfield=1"], ["--resume", "--out", "/tmp/ear-no-such-run"],
    ["--out", "/proc/forbidden"]])
def test_train_bad_inputs(args):
    assert_one_line_error(run_script("train.py", *args))


def test_resume_with_mismatched_checkpoint(tiny_run, tmp_path):
    import shutil
    shutil.copy(tiny_run / "halfcheetah-vel.latest.pt", tmp_path / "halfcheetah-vel.latest.pt")
    result = run_script("train.py", "--out", str(tmp_path), "--resume", *TINY_TRAIN, "--set", "critic_hidden=[64]")
    assert_one_line_error(result)


@pytest.mark.parametrize("family", ["halfcheetah-runjump", "ant-dir", "hopper-vel", "walker-vel"])
def test_short_training_of_each_family(family, tmp_path):
    result = run_script("train.py", "--env", family, "--out", str(tmp_path), "--epochs", "2", *TINY_TRAIN)
    assert result.returncode == 0, result.stderr
    loaded = policy_module.load(str(tmp_path / f"{family}.pt"), env_name=family)
    assert loaded.env_name == family and len(loaded.tasks) == envs.make(family).num_tasks
    result = run_script("train.py", "--env", family, "--out", str(tmp_path), "--epochs", "3", "--resume", *TINY_TRAIN)
    assert result.returncode == 0, result.stderr


def test_baseline_trains_and_loads(tmp_path):
    result = run_script("train.py", "--baseline", "--out", str(tmp_path), "--epochs", "1", *TINY_TRAIN)
    assert result.returncode == 0, result.stderr
    loaded = policy_module.load(str(tmp_path / "halfcheetah-vel-baseline.pt"))
    assert loaded.baseline
    env = envs.make("halfcheetah-vel", seed=0)
    result = rollout(loaded, env, episodes=1)
    assert result["return"].shape == (10,)


def test_rollout_metrics_are_consistent():
    sac = tiny_sac()
    env = envs.make("halfcheetah-vel", tasks=[1.0, 2.0, 3.0, 4.0], seed=0)
    result = rollout(sac.policy, env, episodes=1, record=True, seed=0)
    assert result["obs"].shape == (200, 4, 17) and result["velocity_steps"].shape == (200, 4)
    np.testing.assert_allclose(result["velocity"], result["velocity_steps"][50:].mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result["return"], result["reward_steps"].sum(0), rtol=1e-5)
    np.testing.assert_allclose(task_error(env, result), np.abs(result["velocity"] - [1, 2, 3, 4]))
    again = rollout(sac.policy, env, episodes=1, record=True, seed=0)
    np.testing.assert_array_equal(result["return"], again["return"])


def test_shipped_checkpoints_load_and_reproduce():
    """Every shipped checkpoint loads with weights_only=True, names its family and
    tasks, and its recorded evaluation is reproduced by a fresh evaluation."""
    folder = os.path.join(HERE, "checkpoints")
    shipped = [n for n in sorted(os.listdir(folder)) if n.endswith(".pt") and not n.endswith(".latest.pt")] if os.path.isdir(folder) else []
    if not shipped:
        pytest.skip("no shipped checkpoints")
    import train
    for name in shipped:
        data = torch.load(os.path.join(folder, name), weights_only=True)
        loaded = policy_module.load(os.path.join(folder, name))
        assert loaded.env_name == data["env_name"] and len(loaded.tasks) > 0
        env = envs.make(loaded.env_name, tasks=loaded.tasks, seed=data["config"]["seed"] + 10_000)
        fresh = train.evaluate(loaded, env, data["config"]["eval_episodes"], seed=data["config"]["seed"] + 10_000)
        recorded = data["metrics"]["mean_return"]
        assert abs(fresh["mean_return"] - recorded) <= 0.05 * abs(recorded) + 5, (name, fresh["mean_return"], recorded)
