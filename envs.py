"""The EAR task families on the raw MuJoCo bindings (paper Sec. 5 and appendix).

Each family is one locomotion robot and a list of tasks that differ only in
their reward. A `MultiTaskEnv` holds one simulation per task and advances all of
them in one call of `mujoco.batch` (a C++ loop over the simulations; no Python
per substep), so a multi-task policy sees a `(T, obs_dim)` observation and
returns a `(T, act_dim)` action every step.

    import envs
    env = envs.make("halfcheetah-vel")            # the 10 training tasks v = 1..10 m/s
    obs, info = env.reset(seed=0)                 # (10, 17)
    obs, reward, terminated, truncated, info = env.step(actions)   # actions (10, 6)
    info["velocity"]                              # forward velocity per task, m/s

`make(family, tasks=None, seed=None, nthread=1)`
    family: one of FAMILIES. tasks: None (the family's training tasks), the
    name of a task set in TASK_SETS[family], or a list of task parameters:
    velocities in m/s, Ant directions in degrees, or (kind, value) pairs for
    the multi-modal cheetah. Returns a MultiTaskEnv with attributes `name`,
    `tasks`, `obs_dim`, `act_dim`, `max_steps` (200) and `dt`.

Episodes and resets. `step` resets finished tasks in the same call (Gymnasium's
"same-step" autoreset): for a task whose episode ended, the returned
observation is already the first observation of its next episode, and
`info["final_obs"]` holds the observation the episode really ended on (equal to
`obs` for the tasks that go on). `terminated` is a fall (Gymnasium meaning:
a true end state, do not bootstrap); `truncated` is the 200-step cap (keep
bootstrapping). `reset(seed)` restarts every task; `reset_tasks(ids)`
restarts a subset.

Actions are clipped to [-1, 1] before use, as the actuators' control range
would clip them; the control cost is computed on the clipped action.
A simulation that becomes unstable (MuJoCo raises, resets itself after a
warning, or its state stops being finite) ends its episode as terminated with
`info["unstable"]` set for that task; the run never crashes and observations
never contain NaN.

Every `info` holds per-task arrays: "velocity" (forward velocity; Ant: the
x-y velocity, shape (T, 2)), "height" (root height where the robot has one),
"pitch" (the planar robots' torso pitch, nose up, in degrees: -qpos[2]; NaN for
the Ant), the reward terms by name ("reward_task", "reward_ctrl", "reward_alive"), "final_obs",
"unstable" and "episode_step".

The families (observation, action, reward, termination). dt is the control
period (frame skip x timestep); v = (x_after - x_before) / dt.

halfcheetah-vel
    Planar cheetah, 6 torques, frame skip 5, dt 0.05. Observation (17):
    qpos[1:] (root height, root pitch, 6 joint angles) || qvel (9).
    Reset: qpos0 + U(+-0.1), qvel 0.1*N(0, 1). Reward for velocity v_k:
    -|v - v_k| - 0.1 ||a||^2. Never terminates. Tasks: v_k = 1, 2, ..., 10.
halfcheetah-runjump
    Same robot, tasks are (kind, value) pairs:
      ("run", v):   -|v - v| - 0.1 ||a||^2 (any signed velocity; walking is slow running)
      ("jump", w):  w * z - 0.1 ||a||^2, z = qpos[1] the root height slide (0 at start)
      ("stand", w): w * sin(-pitch) - 0.1 ||a||^2 (ours: rear up on the hind legs;
                    pitch = qpos[2], negative when the nose rises, so the bonus is
                    w when the torso is vertical and falls off past it)
    Task sets: "default" = run 1..7 and jump 1, 5, 10 (the authors' 10 tasks);
    "four-motion" = walk (run 0.5, 1), run (3, 5, 7), jump (1, 5, 10), stand (1, 5).
hopper-vel
    Planar hopper, 3 torques, frame skip 4, dt 0.008. Observation (11):
    qpos[1:] || clip(qvel, +-10). Reset: qpos0, qvel0 + U(+-0.005).
    Reward: -|v - v_k| - 1e-3 ||a||^2 + 1.05. Terminated unless state[2:] is
    finite with |state[2:]| < 100, height > 0.7 and |pitch| < 0.2.
    Tasks: v_k = 0.2, 0.4, ..., 2.0.
walker-vel
    Planar biped (the non-v5 walker2d: feet friction 0.9 and 1.9), 6 torques,
    frame skip 4, dt 0.008. Observation (17): qpos[1:] || clip(qvel, +-10).
    Reset: U(+-0.005) on both. Reward: -|v - v_k| - 1e-3 ||a||^2 + 1.0.
    Terminated unless 0.8 < height < 2.0 and -1 < pitch < 1.
    Tasks: v_k = 0.2, 0.4, ..., 2.0.
ant-dir
    Quadruped, 8 torques, frame skip 5, dt 0.05. Observation (27):
    qpos[2:] || qvel (no contact forces: the release's were always zero).
    Reset: qpos0 + U(+-0.1), qvel 0.1*N(0, 1). Reward for direction theta_k:
    <v_xy, (cos theta_k, sin theta_k)> - 0.5 ||a||^2 + 1.0. Terminated unless the
    state is finite and 0.2 <= torso z <= 1.0. Tasks: 0, 15, ..., 345 degrees.

The models below are written for this project and are physically identical to
Gymnasium's HalfCheetah-v5, Hopper-v5, Ant-v5 and (non-v5) Walker2d models:
same bodies, geoms, masses, inertias, joints, actuators, contact parameters,
timestep and integrator (test_all.py checks rollouts against recorded
reference trajectories). The cheetah's total mass of 14 kg, which the original
sets through the deprecated `settotalmass`, is written as the geom density that
gives it.

Benchmark: `python envs.py --benchmark` prints env steps per second of the
10-task HalfCheetah-Vel env next to a bare single-simulation mj_step loop.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from typing import Callable

import mujoco
import mujoco.batch
import numpy as np

MAX_STEPS = 200

# --------------------------------------------------------------------------
# Models (MJCF). Visual elements are kept to a floor texture and a tracking
# camera for rendering; nothing visual changes the dynamics.
# --------------------------------------------------------------------------

_FLOOR_ASSETS = """
  <asset>
    <texture type="skybox" builtin="gradient" width="100" height="100" rgb1="0.5 0.6 0.7" rgb2="0 0 0"/>
    <texture name="grid" type="2d" builtin="checker" width="100" height="100" rgb1="0.1 0.1 0.1" rgb2="0.8 0.8 0.8"/>
    <material name="floor" texture="grid" texrepeat="60 60" reflectance="0.2"/>
  </asset>"""

HALF_CHEETAH_XML = f"""
<mujoco model="half_cheetah">
  <compiler angle="radian"/>
  <option timestep="0.01" gravity="0 0 -9.81"/>
  <default>
    <joint limited="true" armature="0.1" damping="0.01" stiffness="8"
           solimplimit="0 0.8 0.03" solreflimit="0.02 1"/>
    <!-- density 660.88... makes the total mass exactly 14 kg -->
    <geom contype="1" conaffinity="0" condim="3" friction="0.4 0.1 0.1"
          solimp="0 0.8 0.01" solref="0.02 1" density="660.8849500774735" rgba="0.8 0.6 0.4 1"/>
    <motor ctrllimited="true" ctrlrange="-1 1"/>
  </default>{_FLOOR_ASSETS}
  <worldbody>
    <light directional="true" pos="0 0 1.3" dir="0 0 -1.3" diffuse="1 1 1"/>
    <geom name="floor" type="plane" size="40 40 40" conaffinity="1" material="floor" rgba="0.8 0.9 0.8 1"/>
    <body name="torso" pos="0 0 0.7">
      <camera name="track" mode="trackcom" pos="0 -3 0.3" xyaxes="1 0 0 0 0 1"/>
      <joint name="rootx" type="slide" axis="1 0 0" limited="false" armature="0" damping="0" stiffness="0"/>
      <joint name="rootz" type="slide" axis="0 0 1" limited="false" armature="0" damping="0" stiffness="0"/>
      <joint name="rooty" type="hinge" axis="0 1 0" limited="false" armature="0" damping="0" stiffness="0"/>
      <geom name="torso" type="capsule" fromto="-0.5 0 0 0.5 0 0" size="0.046"/>
      <geom name="head" type="capsule" pos="0.6 0 0.1" axisangle="0 1 0 0.87" size="0.046 0.15"/>
      <body name="bthigh" pos="-0.5 0 0">
        <joint name="bthigh" axis="0 1 0" range="-0.52 1.05" stiffness="240" damping="6"/>
        <geom name="bthigh" type="capsule" pos="0.1 0 -0.13" axisangle="0 1 0 -3.8" size="0.046 0.145"/>
        <body name="bshin" pos="0.16 0 -0.25">
          <joint name="bshin" axis="0 1 0" range="-0.785 0.785" stiffness="180" damping="4.5"/>
          <geom name="bshin" type="capsule" pos="-0.14 0 -0.07" axisangle="0 1 0 -2.03" size="0.046 0.15" rgba="0.9 0.6 0.6 1"/>
          <body name="bfoot" pos="-0.28 0 -0.14">
            <joint name="bfoot" axis="0 1 0" range="-0.4 0.785" stiffness="120" damping="3"/>
            <geom name="bfoot" type="capsule" pos="0.03 0 -0.097" axisangle="0 1 0 -0.27" size="0.046 0.094" rgba="0.9 0.6 0.6 1"/>
          </body>
        </body>
      </body>
      <body name="fthigh" pos="0.5 0 0">
        <joint name="fthigh" axis="0 1 0" range="-1 0.7" stiffness="180" damping="4.5"/>
        <geom name="fthigh" type="capsule" pos="-0.07 0 -0.12" axisangle="0 1 0 0.52" size="0.046 0.133"/>
        <body name="fshin" pos="-0.14 0 -0.24">
          <joint name="fshin" axis="0 1 0" range="-1.2 0.87" stiffness="120" damping="3"/>
          <geom name="fshin" type="capsule" pos="0.065 0 -0.09" axisangle="0 1 0 -0.6" size="0.046 0.106" rgba="0.9 0.6 0.6 1"/>
          <body name="ffoot" pos="0.13 0 -0.18">
            <joint name="ffoot" axis="0 1 0" range="-0.5 0.5" stiffness="60" damping="1.5"/>
            <geom name="ffoot" type="capsule" pos="0.045 0 -0.07" axisangle="0 1 0 -0.6" size="0.046 0.07" rgba="0.9 0.6 0.6 1"/>
          </body>
        </body>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="bthigh" joint="bthigh" gear="120"/>
    <motor name="bshin" joint="bshin" gear="90"/>
    <motor name="bfoot" joint="bfoot" gear="60"/>
    <motor name="fthigh" joint="fthigh" gear="120"/>
    <motor name="fshin" joint="fshin" gear="60"/>
    <motor name="ffoot" joint="ffoot" gear="30"/>
  </actuator>
</mujoco>"""

HOPPER_XML = f"""
<mujoco model="hopper">
  <compiler angle="degree"/>
  <option timestep="0.002" integrator="RK4"/>
  <default>
    <joint limited="true" armature="1" damping="1"/>
    <geom contype="1" conaffinity="1" condim="1" margin="0.001" solimp="0.8 0.8 0.01" solref="0.02 1" rgba="0.8 0.6 0.4 1"/>
    <motor ctrllimited="true" ctrlrange="-1 1"/>
  </default>{_FLOOR_ASSETS}
  <worldbody>
    <light directional="true" pos="0 0 1.3" dir="0 0 -1.3" diffuse="1 1 1"/>
    <geom name="floor" type="plane" size="20 20 0.125" condim="3" material="floor" rgba="0.8 0.9 0.8 1"/>
    <body name="torso" pos="0 0 1.25">
      <camera name="track" mode="trackcom" pos="0 -3 -0.25" xyaxes="1 0 0 0 0 1"/>
      <joint name="rootx" type="slide" axis="1 0 0" pos="0 0 -1.25" limited="false" armature="0" damping="0" stiffness="0"/>
      <joint name="rootz" type="slide" axis="0 0 1" pos="0 0 -1.25" ref="1.25" limited="false" armature="0" damping="0" stiffness="0"/>
      <joint name="rooty" type="hinge" axis="0 1 0" limited="false" armature="0" damping="0" stiffness="0"/>
      <geom name="torso_geom" type="capsule" size="0.05 0.2" friction="0.9"/>
      <body name="thigh" pos="0 0 -0.2">
        <joint name="thigh_joint" axis="0 -1 0" range="-150 0"/>
        <geom name="thigh_geom" type="capsule" pos="0 0 -0.225" size="0.05 0.225" friction="0.9"/>
        <body name="leg" pos="0 0 -0.7">
          <joint name="leg_joint" axis="0 -1 0" pos="0 0 0.25" range="-150 0"/>
          <geom name="leg_geom" type="capsule" size="0.04 0.25" friction="0.9"/>
          <body name="foot" pos="0.13 0 -0.35">
            <joint name="foot_joint" axis="0 -1 0" pos="-0.13 0 0.1" range="-45 45"/>
            <geom name="foot_geom" type="capsule" pos="-0.065 0 0.1" quat="0.70710678118654757 0 -0.70710678118654746 0" size="0.06 0.195" friction="2.0"/>
          </body>
        </body>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor joint="thigh_joint" gear="200"/>
    <motor joint="leg_joint" gear="200"/>
    <motor joint="foot_joint" gear="200"/>
  </actuator>
</mujoco>"""

def _walker_leg(side: str, foot_friction: float, rgba: str) -> str:
    """One walker leg (thigh, leg, foot); `side` is "" (right) or "_left"."""
    return f"""
      <body name="thigh{side}" pos="0 0 -0.2">
        <joint name="thigh{side}_joint" axis="0 -1 0" range="-150 0"/>
        <geom name="thigh{side}_geom" type="capsule" pos="0 0 -0.225" size="0.05 0.225" friction="0.9" rgba="{rgba}"/>
        <body name="leg{side}" pos="0 0 -0.7">
          <joint name="leg{side}_joint" axis="0 -1 0" pos="0 0 0.25" range="-150 0"/>
          <geom name="leg{side}_geom" type="capsule" size="0.04 0.25" friction="0.9" rgba="{rgba}"/>
          <body name="foot{side}" pos="0.2 0 -0.35">
            <joint name="foot{side}_joint" axis="0 -1 0" pos="-0.2 0 0.1" range="-45 45"/>
            <geom name="foot{side}_geom" type="capsule" pos="-0.1 0 0.1" quat="0.70710678118654757 0 -0.70710678118654746 0" size="0.06 0.1" friction="{foot_friction}" rgba="{rgba}"/>
          </body>
        </body>
      </body>"""


WALKER_XML = f"""
<mujoco model="walker2d">
  <compiler angle="degree"/>
  <option timestep="0.002" integrator="RK4"/>
  <default>
    <joint limited="true" armature="0.01" damping="0.1"/>
    <geom contype="1" conaffinity="0" condim="3" density="1000" friction="0.7 0.1 0.1" rgba="0.8 0.6 0.4 1"/>
    <motor ctrllimited="true" ctrlrange="-1 1"/>
  </default>{_FLOOR_ASSETS}
  <worldbody>
    <light directional="true" pos="0 0 1.3" dir="0 0 -1.3" diffuse="1 1 1"/>
    <geom name="floor" type="plane" size="40 40 40" conaffinity="1" material="floor" rgba="0.8 0.9 0.8 1"/>
    <body name="torso" pos="0 0 1.25">
      <camera name="track" mode="trackcom" pos="0 -3 -0.25" xyaxes="1 0 0 0 0 1"/>
      <joint name="rootx" type="slide" axis="1 0 0" pos="0 0 -1.25" limited="false" armature="0" damping="0" stiffness="0"/>
      <joint name="rootz" type="slide" axis="0 0 1" pos="0 0 -1.25" ref="1.25" limited="false" armature="0" damping="0" stiffness="0"/>
      <joint name="rooty" type="hinge" axis="0 1 0" limited="false" armature="0" damping="0" stiffness="0"/>
      <geom name="torso_geom" type="capsule" size="0.05 0.2" friction="0.9"/>
      {_walker_leg("", 0.9, "0.8 0.6 0.4 1")}
      {_walker_leg("_left", 1.9, "0.7 0.3 0.6 1")}
    </body>
  </worldbody>
  <actuator>
    <motor joint="thigh_joint" gear="100"/>
    <motor joint="leg_joint" gear="100"/>
    <motor joint="foot_joint" gear="100"/>
    <motor joint="thigh_left_joint" gear="100"/>
    <motor joint="leg_left_joint" gear="100"/>
    <motor joint="foot_left_joint" gear="100"/>
  </actuator>
</mujoco>"""


def _ant_leg(name: str, sx: int, sy: int, ankle_axis: str, ankle_range: str) -> str:
    """One ant leg: a hip link fixed to the torso, a thigh on a vertical hip
    hinge and a shin on a horizontal ankle hinge; (sx, sy) is its quadrant."""
    h, f = f"{0.2 * sx:.1f} {0.2 * sy:.1f}", f"{0.4 * sx:.1f} {0.4 * sy:.1f}"
    return f"""
      <body name="{name}_leg" pos="0 0 0">
        <geom name="{name}_hip_geom" type="capsule" fromto="0 0 0 {h} 0" size="0.08"/>
        <body name="{name}_thigh" pos="{h} 0">
          <joint name="{name}_hip" axis="0 0 1" range="-30 30"/>
          <geom name="{name}_thigh_geom" type="capsule" fromto="0 0 0 {h} 0" size="0.08"/>
          <body name="{name}_shin" pos="{h} 0">
            <joint name="{name}_ankle" axis="{ankle_axis}" range="{ankle_range}"/>
            <geom name="{name}_shin_geom" type="capsule" fromto="0 0 0 {f} 0" size="0.08"/>
          </body>
        </body>
      </body>"""


ANT_XML = f"""
<mujoco model="ant">
  <compiler angle="degree"/>
  <option timestep="0.01" integrator="RK4"/>
  <default>
    <joint limited="true" armature="1" damping="1"/>
    <geom contype="1" conaffinity="0" condim="3" density="5" friction="1 0.5 0.5" margin="0.01" rgba="0.8 0.6 0.4 1"/>
    <motor ctrllimited="true" ctrlrange="-1 1"/>
  </default>{_FLOOR_ASSETS}
  <worldbody>
    <light directional="true" pos="0 0 1.3" dir="0 0 -1.3" diffuse="1 1 1"/>
    <geom name="floor" type="plane" size="40 40 40" conaffinity="1" material="floor" rgba="0.8 0.9 0.8 1"/>
    <body name="torso" pos="0 0 0.75">
      <camera name="track" mode="trackcom" pos="0 -3 0.3" xyaxes="1 0 0 0 0 1"/>
      <geom name="torso_geom" type="sphere" size="0.25"/>
      <joint name="root" type="free" limited="false" armature="0" damping="0" margin="0.01"/>
      {_ant_leg("front_left", 1, 1, "-1 1 0", "30 70")}
      {_ant_leg("front_right", -1, 1, "1 1 0", "-70 -30")}
      {_ant_leg("back_left", -1, -1, "-1 1 0", "-70 -30")}
      {_ant_leg("back_right", 1, -1, "1 1 0", "30 70")}
    </body>
  </worldbody>
  <actuator>
    <motor joint="back_right_hip" gear="150"/>
    <motor joint="back_right_ankle" gear="150"/>
    <motor joint="front_left_hip" gear="150"/>
    <motor joint="front_left_ankle" gear="150"/>
    <motor joint="front_right_hip" gear="150"/>
    <motor joint="front_right_ankle" gear="150"/>
    <motor joint="back_left_hip" gear="150"/>
    <motor joint="back_left_ankle" gear="150"/>
  </actuator>
</mujoco>"""


# --------------------------------------------------------------------------
# Families: everything that differs between robots and task distributions.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    xml: str
    frame_skip: int
    qpos_skip: int  # observation drops the first qpos_skip coordinates (x, or x and y)
    qvel_clip: float | None
    noise: str  # "cheetah": qpos U(+-0.1), qvel 0.1 N(0,1); "small": U(+-0.005) on both
    ctrl_weight: float
    alive_bonus: float
    healthy: Callable[[np.ndarray, np.ndarray], np.ndarray] | None  # (qpos, qvel) -> bool per task
    task_sets: dict
    title: str  # the paper's name for the family, for figures
    paper_epochs: int  # the authors' training length (Sec. 5.1)
    # The largest target speed the body can mean (the cheetah's record on flat ground
    # is far below 20 m/s, hopper and walker below 5); None for headings.
    velocity_limit: float | None = None
    planar: bool = True  # False for the Ant: velocity is the x-y vector
    # The authors' batch per task and replay per task (None: 1e6 transitions shared by the tasks).
    paper_batch_per_task: int = 128
    paper_replay_per_task: int | None = None
    # Unseen tasks of the adaptation benchmark (adapt.py --benchmark): inside the training
    # range, then outside it; and the interpolation's default pairs of training tasks
    # (alpha = 0, alpha = 1), a neighbouring and a distant one, as written on the command line.
    test_tasks: tuple = ()
    pairs: tuple = ()
    # The release's way of drawing unseen tasks for its adaptation comparison (the
    # authors' working code, HalfCheetah: randint(0, 100) / 10): `count` integers from
    # [low, high) divided by `scale`; None: the family's test_tasks serve instead.
    release_draw: tuple | None = None  # (low, high, scale, count)

    def release_test_tasks(self, seed: int = 0) -> tuple:
        """The release protocol's test tasks, drawn from a fixed seed (the same every run)."""
        if self.release_draw is None:
            return self.test_tasks
        low, high, scale, count = self.release_draw
        return tuple(float(v) / scale for v in np.random.default_rng(seed).integers(low, high, count))

    @property
    def terminates(self) -> bool:
        """Whether an episode can end early (the body falls); the cheetah's never do."""
        return self.healthy is not None

    @property
    def error_unit(self) -> str:
        """Unit of the family's task error and behaviour: m/s, or degrees of heading (Ant)."""
        return "m/s" if self.planar else "deg"

    @property
    def velocity_dim(self) -> int:
        """1: forward velocity along x; 2: the x-y velocity vector (Ant)."""
        return 1 if self.planar else 2

    @property
    def number_kind(self) -> str:
        """The kind of a task written as a bare number: a run velocity, or an Ant direction."""
        return "run" if self.planar else "dir"

    @property
    def behaviour_label(self) -> str:
        return "achieved forward velocity (m/s), steps 50-200" if self.planar else "achieved heading (degrees)"

    @property
    def behaviour_column(self) -> str:
        return "velocity_mps" if self.planar else "heading_deg"

    @property
    def behaviour_tolerance(self) -> float:
        """The smallest step in behaviour counted as a move (0.05 m/s; 2 degrees of heading)."""
        return 0.05 if self.planar else 2.0

    @property
    def multi_modal(self) -> bool:
        """Tasks of several kinds, written (kind, value): run, jump, stand."""
        return len(self.kinds) > 1

    @property
    def kinds(self) -> tuple:
        """The task kinds of the family's task sets, e.g. ("run",), ("dir",) or ("run", "jump", "stand")."""
        found = [t[0] if isinstance(t, tuple) else self.number_kind for ts in self.task_sets.values() for t in ts]
        return tuple(dict.fromkeys(found))

    def describe(self, m: dict) -> str:
        """One line of evaluation measures (analyze.py evaluate's): error, worst task, and
        the family's own behaviour (speed along the direction; jump and stand heights)."""
        if not self.planar:
            return f"heading error {m['error']:.1f}° (worst {m['worst_error']:.1f}°), {m['speed_along']:.2f} m/s along"
        text = ("run " if self.multi_modal else "") + f"velocity error {m['error']:.3f} m/s (worst {m['worst_error']:.2f})"
        for kind in self.kinds[1:]:
            if np.isfinite(m.get(f"{kind}_height", np.nan)):
                text += f"; {kind} height {m[f'{kind}_height']:+.2f} m"
        if np.isfinite(m.get("stand_pitch", np.nan)):
            text += f", pitch {m['stand_pitch']:.0f}°"
        return text

    def difference(self, a, b):
        """a - b in the family's behaviour: plain for velocities, wrapped into [-180, 180) for headings."""
        d = np.asarray(a, dtype=np.float64) - b
        return d if self.planar else wrap_degrees(d)


def _hopper_healthy(qpos, qvel):
    state = np.concatenate([qpos, qvel], axis=1)[:, 2:]
    z, angle = qpos[:, 1], qpos[:, 2]
    return (np.isfinite(state).all(1) & (np.abs(state) < 100).all(1)
            & (z > 0.7) & (np.abs(angle) < 0.2))


def _walker_healthy(qpos, qvel):
    z, angle = qpos[:, 1], qpos[:, 2]
    return (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)


def _ant_healthy(qpos, qvel):
    finite = np.isfinite(qpos).all(1) & np.isfinite(qvel).all(1)
    z = qpos[:, 2]
    return finite & (z >= 0.2) & (z <= 1.0)


def _grid(start, stop, step):
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 6) for i in range(count)]


FAMILIES = {
    "halfcheetah-vel": Family(
        "halfcheetah-vel", HALF_CHEETAH_XML, 5, 1, None, "cheetah", 0.1, 0.0, None,
        {"default": [float(v) for v in range(1, 11)]}, "HalfCheetah-Vel", 4000, 20.0,
        test_tasks=(3.6, 7.2, 9.5, 0.5, 11.0), pairs=(("3", "4"), ("2", "8")), release_draw=(0, 100, 10, 10)),
    "halfcheetah-runjump": Family(
        "halfcheetah-runjump", HALF_CHEETAH_XML, 5, 1, None, "cheetah", 0.1, 0.0, None,
        {"default": [("run", float(v)) for v in range(1, 8)] + [("jump", w) for w in (1.0, 5.0, 10.0)],
         "four-motion": [("run", 0.5), ("run", 1.0), ("run", 3.0), ("run", 5.0), ("run", 7.0),
                         ("jump", 1.0), ("jump", 5.0), ("jump", 10.0), ("stand", 1.0), ("stand", 5.0)]},
        "HalfCheetah-Run-Jump", 4000, 20.0,
        test_tasks=(("run", 3.5), ("run", 6.5), ("jump", 3.0), ("run", 9.0)), pairs=(("run:3", "run:4"), ("run:2", "run:6"))),
    "hopper-vel": Family(
        "hopper-vel", HOPPER_XML, 4, 1, 10.0, "small", 1e-3, 1.05, _hopper_healthy,
        {"default": _grid(0.2, 2.0, 0.2)}, "Hopper-Vel", 5000, 5.0,
        test_tasks=(0.3, 0.7, 1.5, 0.1, 2.5), pairs=(("0.8", "1"), ("0.4", "1.6")), release_draw=(1, 21, 10, 5)),
    "walker-vel": Family(
        "walker-vel", WALKER_XML, 4, 1, 10.0, "small", 1e-3, 1.0, _walker_healthy,
        {"default": _grid(0.2, 2.0, 0.2)}, "Walker-Vel", 5000, 5.0,
        test_tasks=(0.3, 0.7, 1.5, 0.1, 2.5), pairs=(("0.8", "1"), ("0.4", "1.6")), release_draw=(1, 21, 10, 5)),
    "ant-dir": Family(
        "ant-dir", ANT_XML, 5, 2, None, "cheetah", 0.5, 1.0, _ant_healthy,
        {"default": [float(d) for d in range(0, 360, 15)]}, "Ant-Dir", 10000, planar=False,
        paper_batch_per_task=80, paper_replay_per_task=50_000,
        test_tasks=(77.0, 82.0, 97.0, 133.0, 201.0), pairs=(("90", "105"), ("0", "90")), release_draw=(0, 360, 1, 5)),
}
TASK_SETS = {name: record.task_sets for name, record in FAMILIES.items()}
TASK_KINDS = ("run", "jump", "stand")

WEIGHT_LIMIT = 100.0


class ArgumentParser(argparse.ArgumentParser):
    """argparse for every script: defaults in --help, and bad input reported in one
    line with exit code 2 (no usage dump, no traceback)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        fail(f"{message} (see {self.prog} --help)", self.prog)


def fail(message: str, prog: str | None = None) -> None:
    """Print one line naming the problem and the fix, exit with code 2."""
    import sys
    prefix = f"{prog}: " if prog else ""
    print(f"{prefix}error: {message}", file=sys.stderr)
    raise SystemExit(2)


def writable_folder(path: str) -> bool:
    """Create `path` if needed and check that a file can be written there."""
    import os
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
        return True
    except OSError:
        return False


def check_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown environment family {name!r}; valid names: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def normalize_task(family: str, task):
    """Validate one task parameter and return it in canonical form
    (float velocity / direction in degrees, or a (kind, float) pair)."""
    record = check_family(family)
    if record.multi_modal:
        if isinstance(task, str):
            return parse_task(family, task)
        if not (isinstance(task, (tuple, list)) and len(task) == 2 and task[0] in TASK_KINDS):
            raise ValueError(f"{family} tasks are (kind, value) pairs with kind in {TASK_KINDS}, got {task!r}")
        kind = task[0]
        value = _finite(task[1], f"{kind} value")
        if kind == "run" and abs(value) > record.velocity_limit:
            raise ValueError(f"run velocity {value} m/s is beyond what the cheetah can mean (|v| <= {record.velocity_limit})")
        if kind != "run" and not 0.0 <= value <= WEIGHT_LIMIT:
            raise ValueError(f"{kind} weight {value} must lie in [0, {WEIGHT_LIMIT}]")
        return (kind, value)
    value = _finite(task, "task")
    if record.planar and abs(value) > record.velocity_limit:
        raise ValueError(f"velocity {value} m/s is beyond what {family} can mean (|v| <= {record.velocity_limit})")
    if not record.planar and not -360.0 <= value <= 360.0:
        raise ValueError(f"direction {value} degrees must lie in [-360, 360]")
    return value


def parse_task(family: str, text: str):
    """Parse a task from the command line: '4.5', '77' or 'run:3' / 'jump:5'."""
    if check_family(family).multi_modal:
        kind, sep, value = str(text).partition(":")
        if not sep or kind not in TASK_KINDS:
            raise ValueError(f"{family} tasks are written kind:value with kind in {', '.join(TASK_KINDS)} (e.g. run:3.5), got {text!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"task value {value!r} is not a number (e.g. run:3.5)") from None
        return normalize_task(family, (kind, number))
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"task {text!r} is not a number (e.g. --task 4.5)") from None
    return normalize_task(family, number)


def _finite(value, what):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return number


def training_tasks(family: str, task_set: str = "default") -> list:
    record = check_family(family)
    if task_set not in record.task_sets:
        raise ValueError(f"unknown task set {task_set!r} for {family}; valid: {', '.join(record.task_sets)}")
    return list(record.task_sets[task_set])


def task_label(task) -> str:
    """A short printable name: '4.5', 'run:3', 'jump:5'."""
    if isinstance(task, tuple):
        return f"{task[0]}:{task[1]:g}"
    return f"{task:g}"


def load_model(family: str) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(check_family(family).xml)


# --------------------------------------------------------------------------
# The multi-task environment.
# --------------------------------------------------------------------------


class MultiTaskEnv:
    """T simulations of one robot, one per task, advanced together.

    See the module docstring for the API and the meaning of every output.
    """

    def __init__(self, family: str, tasks=None, seed: int | None = None, nthread: int = 1):
        self.family = check_family(family)
        self.name = family
        if tasks is None:
            tasks = training_tasks(family)
        elif isinstance(tasks, str):
            tasks = training_tasks(family, tasks)
        if len(tasks) == 0:
            raise ValueError("tasks must be a non-empty list")
        self.tasks = [normalize_task(family, t) for t in tasks]
        self.num_tasks = len(self.tasks)
        self.model = load_model(family)
        # persistent: each simulation keeps its own MjData, so its warning
        # counters tell which one went unstable
        self.batch = mujoco.batch.Batch(self.model, nsim=self.num_tasks, nthread=nthread, persistent=True)
        _silence_mujoco_warnings()
        self.qpos = self.batch.bind("qpos")
        self.qvel = self.batch.bind("qvel")
        self.ctrl = self.batch.bind("ctrl")
        self.act_dim = self.model.nu
        self.obs_dim = self.model.nq - self.family.qpos_skip + self.model.nv
        self.max_steps = MAX_STEPS
        self.dt = self.model.opt.timestep * self.family.frame_skip
        self.episode_step = np.zeros(self.num_tasks, dtype=np.int64)
        self.rng = np.random.default_rng(seed)
        self._reward_arrays()

    def _reward_arrays(self):
        """Per-task reward coefficients, so the reward is one vector formula."""
        T = self.num_tasks
        self.target_velocity = np.zeros(T)
        self.velocity_weight = np.zeros(T)  # weight of -|v - v_k| (run tasks)
        self.height_weight = np.zeros(T)  # jump tasks
        self.upright_weight = np.zeros(T)  # stand tasks
        self.direction = np.zeros((T, 2))  # Ant
        for i, task in enumerate(self.tasks):
            if isinstance(task, tuple):
                kind, value = task
                if kind == "run":
                    self.target_velocity[i], self.velocity_weight[i] = value, 1.0
                elif kind == "jump":
                    self.height_weight[i] = value
                else:
                    self.upright_weight[i] = value
            elif self.family.planar:
                self.target_velocity[i], self.velocity_weight[i] = task, 1.0
            else:
                angle = math.radians(task)
                self.direction[i] = (math.cos(angle), math.sin(angle))

    # ---- observations and resets -------------------------------------

    def _observe(self) -> np.ndarray:
        qvel = self.qvel
        if self.family.qvel_clip is not None:
            qvel = np.clip(qvel, -self.family.qvel_clip, self.family.qvel_clip)
        return np.concatenate([self.qpos[:, self.family.qpos_skip:], qvel], axis=1).astype(np.float32)

    def reset_tasks(self, ids) -> None:
        """Start a new episode in the given simulations (initial state plus noise)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return
        self.batch.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
        nq, nv, n = self.model.nq, self.model.nv, ids.size
        if self.family.noise == "cheetah":
            qpos_noise = self.rng.uniform(-0.1, 0.1, (n, nq))
            qvel_noise = 0.1 * self.rng.standard_normal((n, nv))
        else:
            qpos_noise = self.rng.uniform(-0.005, 0.005, (n, nq))
            qvel_noise = self.rng.uniform(-0.005, 0.005, (n, nv))
        self.qpos[ids] = self.model.qpos0 + qpos_noise
        self.qvel[ids] = qvel_noise
        self.ctrl[ids] = 0.0
        self.batch.forward(ids)
        self.episode_step[ids] = 0

    def reset(self, seed: int | None = None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.reset_tasks(np.arange(self.num_tasks))
        return self._observe(), {"episode_step": self.episode_step.copy()}

    # ---- stepping -----------------------------------------------------

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_tasks, self.act_dim):
            raise ValueError(f"actions must have shape (num_tasks, act_dim) = {(self.num_tasks, self.act_dim)}, got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ValueError(f"actions contain NaN or infinity; expected finite values of shape {(self.num_tasks, self.act_dim)}")
        actions = np.clip(actions, -1.0, 1.0)
        xy_before = self.qpos[:, :2].copy()
        self.ctrl[:] = actions
        unstable = np.zeros(self.num_tasks, dtype=bool)
        warnings_before = _WARNING_COUNT[0]
        try:
            self.batch.step(nstep=self.family.frame_skip)
        except mujoco.batch.SimulationError as error:
            unstable[np.asarray(error.ids, dtype=np.int64)] = True
        if _WARNING_COUNT[0] > warnings_before:
            # MuJoCo warned (and reset the simulation that blew up): find which
            unstable |= np.array([sum(w.number for w in self.batch.get_data(i).warning) > 0
                                 for i in range(self.num_tasks)])
        unstable |= ~(np.isfinite(self.qpos).all(1) & np.isfinite(self.qvel).all(1))

        velocity_xy = (self.qpos[:, :2] - xy_before) / self.dt
        ctrl_cost = self.family.ctrl_weight * np.sum(actions ** 2, axis=1)
        if self.family.planar:
            velocity = velocity_xy[:, 0]
            task_reward = (-self.velocity_weight * np.abs(velocity - self.target_velocity)
                           + self.height_weight * self.qpos[:, 1]
                           + self.upright_weight * np.sin(-self.qpos[:, 2]))
            height = self.qpos[:, 1].copy()
            pitch = np.degrees(-self.qpos[:, 2])
        else:
            velocity = velocity_xy
            task_reward = np.sum(velocity_xy * self.direction, axis=1)
            height = self.qpos[:, 2].copy()
            pitch = np.full(self.num_tasks, np.nan)
        healthy = (np.ones(self.num_tasks, bool) if self.family.healthy is None
                   else self.family.healthy(self.qpos, self.qvel))
        alive = np.full(self.num_tasks, self.family.alive_bonus)
        reward = task_reward - ctrl_cost + alive
        terminated = ~healthy | unstable

        self.episode_step += 1
        truncated = (self.episode_step >= self.max_steps) & ~terminated
        if unstable.any():
            # Never hand out NaN: the state of a broken simulation is meaningless.
            self.qpos[unstable] = self.model.qpos0
            self.qvel[unstable] = 0.0
            reward[unstable] = 0.0
            velocity[unstable] = 0.0
            height[unstable] = 0.0
            pitch[unstable] = 0.0
        obs = self._observe()
        final_obs = obs.copy()
        done = terminated | truncated
        if done.any():
            self.reset_tasks(np.flatnonzero(done))
            obs = self._observe()
        info = {
            "velocity": velocity, "height": height, "pitch": pitch, "reward_task": task_reward,
            "reward_ctrl": -ctrl_cost, "reward_alive": alive, "final_obs": final_obs,
            "unstable": unstable, "episode_step": self.episode_step.copy(),
        }
        return obs, reward.astype(np.float32), terminated, truncated, info

    # ---- what a rollout achieved (policy.rollout's result) -------------

    def task_error(self, result: dict) -> np.ndarray:
        """The family's error measure per simulation: |mean velocity - target| in m/s;
        Ant: heading error of the mean x-y velocity in degrees; jump and stand tasks:
        NaN (they have no target; see result["height_mean"])."""
        if not self.family.planar:
            target = np.array([float(t) for t in self.tasks])
            return np.abs(wrap_degrees(heading(result["velocity"]) - target))
        error = np.abs(result["velocity"] - self.target_velocity)
        return np.where(self.velocity_weight > 0, error, np.nan)

    def task_measures(self, result: dict) -> dict:
        """The family's behaviour measures beside the error, per simulation (NaN where a
        measure does not apply): Ant, "speed_along" the commanded direction (m/s); tasks
        without a velocity target (jump, stand), "height" (mean root height, m); stand
        tasks, "pitch" (mean torso pitch, nose up, degrees: how far the cheetah rears)."""
        if not self.family.planar:
            return {"speed_along": result["speed_along"]}
        if (self.velocity_weight > 0).all():
            return {}
        measures = {"height": np.where(self.velocity_weight > 0, np.nan, result["height_mean"])}
        if (self.upright_weight > 0).any():
            measures["pitch"] = np.where(self.upright_weight > 0, result["pitch_mean"], np.nan)
        return measures

    def summary(self, result: dict) -> dict:
        """What all simulations (repeats of one task) did together: the mean forward
        "velocity" (m/s), or for the Ant the "heading" of the mean x-y velocity (deg);
        and for a task without a velocity target (jump, stand) the mean root "height" (m)."""
        if not self.family.planar:
            return {"heading": float(heading(result["velocity"].mean(axis=0, keepdims=True))[0])}
        out = {"velocity": float(result["velocity"].mean())}
        if not (self.velocity_weight > 0).all():
            out["height"] = float(result["height_mean"].mean())
        return out

    def speed_along(self, velocity: np.ndarray) -> np.ndarray:
        """Velocity along each task's direction: the forward velocity itself, or for the
        Ant the (T, 2) x-y velocity projected on the task's direction."""
        return velocity if self.family.planar else np.sum(velocity * self.direction, axis=1)

    def behaviour(self, result: dict) -> np.ndarray:
        """What each simulation did, in the family's unit: forward velocity (m/s), or
        for the Ant the heading in degrees of the torso's displacement over the episode."""
        return result["velocity"] if self.family.planar else heading(result["velocity_all"])


def wrap_degrees(degrees):
    """Angles in degrees wrapped into [-180, 180)."""
    return (np.asarray(degrees, dtype=np.float64) + 180.0) % 360.0 - 180.0


def heading(velocity_xy: np.ndarray) -> np.ndarray:
    """Direction of (N, 2) x-y velocities in degrees, in (-180, 180]."""
    return np.degrees(np.arctan2(velocity_xy[:, 1], velocity_xy[:, 0]))


MUJOCO_WARNINGS: list[str] = []  # the latest MuJoCo warnings, instead of stderr and MUJOCO_LOG.TXT
_WARNING_COUNT = [0]


def _record_warning(message: str) -> None:
    _WARNING_COUNT[0] += 1
    MUJOCO_WARNINGS.append(message)
    del MUJOCO_WARNINGS[:-100]


def _silence_mujoco_warnings() -> None:
    """Route MuJoCo's warnings to MUJOCO_WARNINGS: an unstable simulation is
    reported through info["unstable"], not by printing or writing a log file."""
    if mujoco.get_mju_user_warning() is not _record_warning:
        mujoco.set_mju_user_warning(_record_warning)


def make(family: str, tasks=None, seed: int | None = None, nthread: int = 1) -> MultiTaskEnv:
    """Build a MultiTaskEnv; see the module docstring."""
    return MultiTaskEnv(family, tasks=tasks, seed=seed, nthread=nthread)


# --------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------


def benchmark(seconds: float = 3.0, nthread: int = 1) -> dict:
    """Env steps/s of the 10-task HalfCheetah-Vel env (random actions, resets
    included) against a bare one-simulation mj_step loop, same process."""
    model = load_model("halfcheetah-vel")
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    frame_skip = FAMILIES["halfcheetah-vel"].frame_skip
    controls = rng.uniform(-1, 1, (1000, model.nu))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for u in controls[:200]:
            data.ctrl[:] = u
            mujoco.mj_step(model, data, nstep=frame_skip)
        steps += 200
    bare_rate = steps / (time.perf_counter() - start)

    env = make("halfcheetah-vel", seed=0, nthread=nthread)
    env.reset()
    actions = rng.uniform(-1, 1, (1000, env.num_tasks, env.act_dim))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in actions[:200]:
            env.step(a)
        steps += 200 * env.num_tasks
    env_rate = steps / (time.perf_counter() - start)
    return {"benchmark": "envs", "family": "halfcheetah-vel", "tasks": env.num_tasks,
            "nthread": nthread, "bare_mj_step_env_steps_per_s": round(bare_rate),
            "multitask_env_steps_per_s": round(env_rate),
            "ratio_per_core": round(env_rate / nthread / bare_rate, 3)}


def main(argv=None) -> None:
    parser = ArgumentParser(prog="envs.py", description="EAR environments: list the families, or run the speed benchmark.")
    parser.add_argument("--benchmark", action="store_true", help="print env steps/s as one JSON line")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--nthread", type=int, default=1, help="threads of the batched env")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or args.nthread < 1:
        parser.error("--seconds must be positive and --nthread at least 1")
    if args.benchmark:
        print(json.dumps(benchmark(args.seconds, args.nthread)))
    else:
        for name in FAMILIES:
            env = make(name)
            print(f"{name:20s} obs {env.obs_dim:3d}  act {env.act_dim}  dt {env.dt:.3f}  "
                  f"tasks {[task_label(t) for t in env.tasks]}")


if __name__ == "__main__":
    main()
