"""The EAR multi-task policy: state encoder (LSE), task encoder (LTE), action decoder,
and the twin critics (paper Sec. 3 and Fig. 2).

    LSE  s_t = normalize(StateEncoder(o_t))            on the unit sphere S^15
    LTE  z_k = normalize(TaskEncoder(onehot(k)))        on the unit sphere S^2
    decoder   (mu, log sigma) = ActionDecoder([s_t, z_k]),  a = tanh(mu + sigma * eps)
    critics   Q_i(o, a, onehot(k)), i = 1, 2          (they never see LSE or LTE)

The one "moderate constraint" beyond the two projections is Gaussian noise on
the LTE in the actor loss: z~ = normalize(z + N(0, lte_noise^2)) (Sec. 3.2's moderate constraints).

After training, the task encoder is only a table of T unit vectors
(`policy.task_embeddings`); adaptation, interpolation and composition feed any
unit vector of R^3 to the frozen state encoder and action decoder through
`policy.act(obs, lte)`.

`baseline=True` builds the plain multi-task SAC policy that the paper compares
against: one MLP on [observation, onehot(task)], with the same critics.

Public API:
    policy = load("checkpoints/halfcheetah-vel.pt")   # a trained Policy, eval mode, CPU
    policy.env_name, policy.tasks, policy.task_embeddings   # (T, 3) unit vectors
    actions = policy.act(obs, lte, deterministic=True)     # (N, obs_dim), (N, 3) -> (N, act_dim)
    result = rollout(policy, env, ltes)                      # one episode per simulation

`rollout` is the single loop that evaluation (train.py), adaptation (adapt.py)
and every analysis (analyze.py) use to run a policy in the environments.
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
CHECKPOINT_FORMAT = "ear-checkpoint-v1"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of ours; the message says why and what to do."""


def _release_init(layer: nn.Linear, last: bool) -> None:
    """The authors' initialisation: hidden weights U(+-1/sqrt(size[0])) with bias 0.1,
    last layers U(+-3e-3) for weight and bias."""
    if last:
        nn.init.uniform_(layer.weight, -3e-3, 3e-3)
        nn.init.uniform_(layer.bias, -3e-3, 3e-3)
    else:
        bound = 1.0 / math.sqrt(layer.weight.shape[0])
        nn.init.uniform_(layer.weight, -bound, bound)
        nn.init.constant_(layer.bias, 0.1)


def mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    layers, width = [], in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, out_dim))
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        _release_init(layer, last=i == len(linears) - 1)
    return nn.Sequential(*layers)


def tanh_gaussian(out: torch.Tensor, deterministic: bool):
    """Split the decoder output into (mu, log sigma), sample a = tanh(u) and return
    (a, log pi(a)) with the tanh change-of-variables correction (1e-6 as in the release)."""
    mean, log_std = out.float().chunk(2, dim=-1)  # fp32 even under bf16 autocast: log-probs need it
    if deterministic:
        return torch.tanh(mean), None
    log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    std = log_std.exp()
    noise = torch.randn_like(mean)
    pre_tanh = mean + std * noise
    action = torch.tanh(pre_tanh)
    log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prob = log_prob - torch.log(1 - action.pow(2) + 1e-6).sum(-1)
    return action, log_prob


# Points of the LTE sphere S^2 (Sec. 3.2): every LTE is a unit vector, and the paper's
# interpolation and composition (Sec. 5.2) move along the sphere between two of them.


def unit(v) -> np.ndarray:
    """v (or each row of v) scaled to unit length, in float64."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def nlerp(a, b, alpha: float) -> np.ndarray:
    """normalize((1 - alpha) a + alpha b): a at alpha = 0, b at alpha = 1."""
    mix = (1.0 - alpha) * unit(a) + alpha * unit(b)
    norm = np.linalg.norm(mix)
    if norm < 1e-9:
        raise ValueError("nlerp of opposite vectors at their midpoint has no direction")
    return mix / norm


def slerp(a, b, alpha: float) -> np.ndarray:
    """Great-circle interpolation at constant angular speed: a at alpha = 0, b at alpha = 1."""
    a, b = unit(a), unit(b)
    omega = math.acos(float(np.clip(a @ b, -1.0, 1.0)))
    if math.sin(omega) < 1e-6:  # (nearly) equal vectors: the chord is the arc
        return nlerp(a, b, alpha)
    mix = (math.sin((1 - alpha) * omega) * a + math.sin(alpha * omega) * b) / math.sin(omega)
    return mix / np.linalg.norm(mix)


class Policy(nn.Module):
    """EAR actor (state encoder + task encoder + action decoder), or the plain
    multi-task baseline when `baseline` is set."""

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, encoder_hidden=(400, 400),
                 task_hidden=(400,), decoder_hidden=(400, 400, 400, 400), lse_dim: int = 16,
                 lte_dim: int = 3, baseline: bool = False, baseline_hidden=(400, 400, 400, 400)):
        super().__init__()
        self.obs_dim, self.act_dim, self.num_tasks = obs_dim, act_dim, num_tasks
        self.lse_dim, self.lte_dim, self.baseline = lse_dim, lte_dim, baseline
        if baseline:
            self.net = mlp(obs_dim + num_tasks, list(baseline_hidden), 2 * act_dim)
        else:
            self.state_encoder = mlp(obs_dim, list(encoder_hidden), lse_dim)
            self.task_encoder = mlp(num_tasks, list(task_hidden), lte_dim)
            self.decoder = mlp(lse_dim + lte_dim, list(decoder_hidden), 2 * act_dim)
        # Filled by load(): which environment and tasks this policy was trained on.
        self.env_name: str | None = None
        self.tasks: list = []

    # ---- the three parts ------------------------------------------------

    def parts(self) -> list[nn.Module]:
        """The modules whose gradients are clipped each on its own (Sec. 3.3): state
        encoder, task encoder and decoder, or the baseline's one network."""
        return [self.net] if self.baseline else [self.state_encoder, self.task_encoder, self.decoder]

    def lse(self, obs: torch.Tensor) -> torch.Tensor:
        """Latent sensory embedding: the state encoder's output on the unit sphere."""
        return F.normalize(self.state_encoder(obs), dim=-1)

    def lte_table(self) -> torch.Tensor:
        """Latent task embeddings of all T training tasks, (T, lte_dim), unit norm.
        The task encoder sees one-hot inputs, so one pass over the identity is all of it."""
        eye = torch.eye(self.num_tasks, device=self.task_encoder[0].weight.device)
        return F.normalize(self.task_encoder(eye), dim=-1)

    def decode(self, lse: torch.Tensor, lte: torch.Tensor, deterministic: bool = False):
        return tanh_gaussian(self.decoder(torch.cat([lse, lte], dim=-1)), deterministic)

    def forward(self, obs: torch.Tensor, task: torch.Tensor, deterministic: bool = False,
                lte_noise: float = 0.0):
        """Action and log-probability for observations and integer task ids."""
        if self.baseline:
            onehot = F.one_hot(task, self.num_tasks).to(obs.dtype)
            return tanh_gaussian(self.net(torch.cat([obs, onehot], dim=-1)), deterministic)
        lte = self.lte_table()[task]
        if lte_noise > 0:
            lte = F.normalize(lte + lte_noise * torch.randn_like(lte), dim=-1)
        return self.decode(self.lse(obs), lte, deterministic)

    # ---- numpy interface for users and the analysis scripts -------------

    @property
    def task_embeddings(self) -> np.ndarray:
        """(T, lte_dim) array of the trained tasks' unit LTEs."""
        if self.baseline:
            raise ValueError("the plain multi-task baseline has no task embeddings")
        with torch.no_grad():
            return self.lte_table().double().cpu().numpy()

    @torch.no_grad()
    def act(self, obs, lte, deterministic: bool = True) -> np.ndarray:
        """Actions for observations (N, obs_dim) under task embeddings (N, lte_dim).

        `lte` may be any vectors; they are projected onto the unit sphere as in
        training. For the baseline policy pass integer task ids (N,), or task-input
        vectors (N, T) in place of the one-hot rows (its adaptation searches these)."""
        device = next(self.parameters()).device
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device)
        if self.baseline and np.asarray(lte).ndim == 2:  # task-input vectors in place of one-hot rows
            task = torch.as_tensor(np.asarray(lte), dtype=torch.float32, device=device)
            action, _ = tanh_gaussian(self.net(torch.cat([obs_t, task], dim=-1)), deterministic)
        elif self.baseline:
            task = torch.as_tensor(np.asarray(lte), dtype=torch.long, device=device)
            action, _ = self(obs_t, task, deterministic)
        else:
            lte_t = torch.as_tensor(np.asarray(lte), dtype=torch.float32, device=device)
            if lte_t.shape != (obs_t.shape[0], self.lte_dim):
                raise ValueError(f"lte must have shape (N, {self.lte_dim}) with N = {obs_t.shape[0]}, got {tuple(lte_t.shape)}")
            action, _ = self.decode(self.lse(obs_t), F.normalize(lte_t, dim=-1), deterministic)
        return action.cpu().numpy()


class StackedLinear(nn.Module):
    """`ensemble` independent linear layers evaluated in one batched matmul."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int, last: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim))
        for i in range(ensemble):  # the same initialisation as one nn.Linear each
            layer = nn.Linear(in_dim, out_dim)
            _release_init(layer, last)
            self.weight.data[i] = layer.weight.data.T
            self.bias.data[i, 0] = layer.bias.data

    def forward(self, x: torch.Tensor, detach: bool = False) -> torch.Tensor:
        w, b = (self.weight.detach(), self.bias.detach()) if detach else (self.weight, self.bias)
        return torch.baddbmm(b, x, w)


class TwinCritic(nn.Module):
    """Q1 and Q2 on [obs, action, onehot(task)], both in one batched computation.

    forward returns (ensemble, B): (2, B) for the paper's twin critics. With `detach=True` gradients reach the inputs (the
    action, for the actor loss) but not the critic's weights."""

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, hidden=(400, 400, 400, 400), ensemble: int = 2):
        super().__init__()
        self.num_tasks = num_tasks
        sizes = [obs_dim + act_dim + num_tasks, *hidden, 1]
        self.layers = nn.ModuleList(
            StackedLinear(ensemble, sizes[i], sizes[i + 1], last=i == len(sizes) - 2) for i in range(len(sizes) - 1))
        self.ensemble = ensemble

    def forward(self, obs, action, task, detach: bool = False) -> torch.Tensor:
        # num_tasks = 0: no task input (PEARL's critics see the task only through z in obs)
        onehot = [F.one_hot(task, self.num_tasks).to(obs.dtype)] if self.num_tasks else []
        x = torch.cat([obs, action, *onehot], dim=-1).unsqueeze(0).expand(self.ensemble, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, detach)
            if i < len(self.layers) - 1:
                x = F.relu_(x)
        return x.squeeze(-1)


def build_networks(obs_dim: int, act_dim: int, num_tasks: int, cfg: dict):
    """Policy and twin critic with the sizes of a config dict (see train.Config)."""
    policy = Policy(obs_dim, act_dim, num_tasks, encoder_hidden=cfg["encoder_hidden"],
                    task_hidden=cfg["task_hidden"], decoder_hidden=cfg["decoder_hidden"],
                    lse_dim=cfg["lse_dim"], lte_dim=cfg["lte_dim"], baseline=cfg["baseline"],
                    baseline_hidden=cfg["baseline_hidden"])
    critic = TwinCritic(obs_dim, act_dim, num_tasks, hidden=cfg["critic_hidden"], ensemble=cfg.get("critics", 2))
    return policy, critic


# --------------------------------------------------------------------------
# Checkpoints and files (every script writes through these)
# --------------------------------------------------------------------------


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`:
    a crash mid-write leaves the previous file intact."""
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def csv_text(rows: list[dict]) -> str:
    """Rows as CSV; the columns are every key of any row (in order of first
    appearance), blank where a row lacks one."""
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_checkpoint(path: str) -> dict:
    """torch.load with weights_only=True and our format checks; raises CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; train one with `python train.py` or pass --checkpoint PATH")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, foreign pickle, code in a pickle, ...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable EAR checkpoint ({first_line[:120]}); retrain it or pass another --checkpoint") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an EAR checkpoint (format tag missing); pass a file written by train.py")
    return data


def tasks_from_checkpoint(raw) -> list:
    return [tuple(t) if isinstance(t, (list, tuple)) else float(t) for t in raw]


def load(path: str, env_name: str | None = None, device: str = "cpu") -> Policy:
    """Load a trained policy for acting (eval mode). If `env_name` is given, refuse a
    checkpoint of another family."""
    data = read_checkpoint(path)
    cfg, name = data["config"], data["env_name"]
    if cfg.get("pearl"):
        raise CheckpointError(f"{path} is a PEARL baseline (train.py --pearl); load it with pearl.load, or adapt it "
                              f"with `python adapt.py --checkpoint {path} --task ...`")
    if env_name is not None and name != env_name:
        raise CheckpointError(f"{path} was trained on {name}, not {env_name}; pass --env {name} or a {env_name} checkpoint")
    policy, _ = build_networks(data["obs_dim"], data["act_dim"], len(data["tasks"]), cfg)
    try:
        policy.load_state_dict(data["policy"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"{path} does not match its own config ({str(error).splitlines()[0][:100]}); retrain it") from None
    policy.env_name, policy.tasks = name, tasks_from_checkpoint(data["tasks"])
    policy.config = cfg
    policy.metrics = data.get("metrics", {})
    policy.progress = data.get("progress", {})  # epoch, env_steps, updates, wall_clock at saving
    return policy.to(device).eval()


# --------------------------------------------------------------------------
# The one rollout loop
# --------------------------------------------------------------------------


SETTLE_STEPS = 50  # velocity is measured after the start-up, over the last 150 of 200 steps


@torch.no_grad()
def rollout(policy: Policy, env, ltes=None, episodes: int = 1, deterministic: bool = True,
            record: bool = False, seed: int | None = None) -> dict:
    """Run `episodes` episodes in every simulation of `env` at once.

    ltes: (T, lte_dim) embeddings, one per simulation (default: the policy's own
    training embeddings, when env holds its training tasks). For the baseline
    policy, pass integer task ids (T,). seed: episode k resets from seed + k, and
    stochastic actions draw from seed (None: from the environment's and torch's
    running generators).
    Returns per-simulation arrays averaged over episodes: "return", "length",
    "velocity" (mean forward velocity over the last 150 steps of the 200, i.e.
    after a 50-step start-up; over the whole episode if it ended sooner; Ant:
    the mean x-y velocity, (T, 2)), "velocity_all" (over the whole episode),
    "speed_along" (velocity along the task's direction: the forward velocity; Ant: the x-y
    velocity projected on the commanded direction), "height_mean",
    "height_max", "pitch_mean" (torso pitch, env.step's info["pitch"]), "fell" (fraction of episodes ending in a fall); with `record`,
    also per-step "obs", "action_steps", "velocity_steps", "height_steps", "pitch_steps", "reward_steps"
    of the first episode, shaped (steps, T, ...), where steps past a task's end
    repeat nothing (they are NaN).
    """
    T = env.num_tasks
    if ltes is None:
        ltes = np.arange(T) if policy.baseline else policy.task_embeddings
    ltes = np.asarray(ltes)
    totals = {k: np.zeros(T) for k in ("return", "length", "height_mean", "height_max", "pitch_mean", "fell", "speed_along")}
    velocity_sum = np.zeros((T, 2)) if env.family.velocity_dim == 2 else np.zeros(T)
    velocity_all_sum = np.zeros_like(velocity_sum)
    recorded = None
    # Stochastic actions draw from `seed` alone, whatever ran before in this process,
    # so a seeded rollout gives the same numbers alone or after other work.
    seeded = seed is not None and not deterministic
    device = next(policy.parameters()).device if seeded else None
    with torch.random.fork_rng(devices=[device] if seeded and device.type == "cuda" else [], enabled=seeded):
        if seeded:
            torch.manual_seed(seed)
        for episode in range(episodes):
            obs, _ = env.reset(seed=None if seed is None else seed + episode)
            alive = np.ones(T, dtype=bool)
            ep_return, ep_len = np.zeros(T), np.zeros(T)
            ep_vel = np.zeros_like(velocity_sum)
            ep_vel_late, ep_len_late = np.zeros_like(velocity_sum), np.zeros(T)
            ep_hmax = np.full(T, -np.inf)
            ep_hsum, ep_psum = np.zeros(T), np.zeros(T)
            steps = ({"obs": [], "action_steps": [], "velocity_steps": [], "height_steps": [], "pitch_steps": [], "reward_steps": []}
                     if record and episode == 0 else None)
            for step in range(env.max_steps):
                actions = policy.act(obs, ltes, deterministic=deterministic)
                if steps is not None:
                    steps["obs"].append(np.where(alive[:, None], obs, np.nan))
                    steps["action_steps"].append(np.where(alive[:, None], actions, np.nan))
                obs, reward, terminated, truncated, info = env.step(actions)
                a = alive.astype(np.float64)
                ep_return += a * reward
                ep_len += a
                weighted_velocity = (a[:, None] if ep_vel.ndim == 2 else a) * info["velocity"]
                ep_vel += weighted_velocity
                if step >= SETTLE_STEPS:
                    ep_vel_late += weighted_velocity
                    ep_len_late += a
                ep_hsum += a * info["height"]
                ep_psum += a * info["pitch"]
                ep_hmax = np.where(alive, np.maximum(ep_hmax, info["height"]), ep_hmax)
                if steps is not None:
                    mask = np.where(alive, 1.0, np.nan)
                    steps["velocity_steps"].append(info["velocity"] * (mask[:, None] if ep_vel.ndim == 2 else mask))
                    steps["height_steps"].append(info["height"] * mask)
                    steps["pitch_steps"].append(info["pitch"] * mask)
                    steps["reward_steps"].append(reward * mask)
                totals["fell"] += alive & terminated
                alive &= ~(terminated | truncated)
                if not alive.any():
                    break
            length = np.maximum(ep_len, 1)
            totals["return"] += ep_return
            totals["length"] += ep_len
            totals["height_mean"] += ep_hsum / length
            totals["pitch_mean"] += ep_psum / length
            totals["height_max"] += ep_hmax
            per_step = (lambda x, n: x / (n[:, None] if x.ndim == 2 else n))
            mean_velocity_all = per_step(ep_vel, length)
            late = ep_len_late > 0
            mean_velocity = np.where(late[:, None] if ep_vel.ndim == 2 else late,
                                     per_step(ep_vel_late, np.maximum(ep_len_late, 1)), mean_velocity_all)
            velocity_sum += mean_velocity
            velocity_all_sum += mean_velocity_all
            totals["speed_along"] += env.speed_along(mean_velocity)
            if steps is not None:
                recorded = {k: np.stack(v) for k, v in steps.items()}
    result = {k: v / episodes for k, v in totals.items()}
    result["velocity"] = velocity_sum / episodes
    result["velocity_all"] = velocity_all_sum / episodes
    if recorded:
        result.update(recorded)
    return result
