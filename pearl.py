"""PEARL (Rakelly et al. 2019): the off-policy meta-RL baseline that EAR's few-shot
adaptation is compared with (paper Sec. 5.3). Not part of EAR.

    python train.py --pearl                                  # meta-train on the training tasks
    python adapt.py --checkpoint checkpoints/halfcheetah-vel-pearl.pt --task 7.2

PEARL infers the task from experience instead of searching an embedding:

    context encoder   per transition c_n = (o, a, r) an MLP gives a Gaussian factor
                      Psi(z | c_n) = N(mu_n, sigma_n^2) (variance by softplus)
    posterior         q(z | c_1..N) = prod_n Psi(z | c_n), a product of Gaussians:
                      1/sigma^2 = sum_n 1/sigma_n^2,  mu = sigma^2 sum_n mu_n / sigma_n^2;
                      with no context, the prior N(0, I)
    actor, critics    SAC (sac.py, the same update as EAR's) on the observation with
                      z appended: pi(a | o, z), Q_i(o, z, a); no task id anywhere
    encoder loss      the critics' Bellman error through z (z is sampled with the
                      reparameterisation trick), plus KL_WEIGHT * KL(q(z|c) || N(0, I));
                      the actor and the temperature see z detached

Facts from the authors' code (oyster, cheetah-vel), kept: a 5-d latent, the context
encoder an MLP of 3 x 200, KL weight 0.1, reward scale 5 in the critics' target (the
weight of the Bellman error against the KL term rests on it), 100 context transitions
per task, context (o, a, r) without the next observation, drawn from a second buffer
per task that holds only the most recent transitions collected with z from the prior
(the data an adaptation starts from), while the SAC batch comes from the whole replay.
Ours, for a like-for-like comparison with EAR on the same CPU budget: the actor and
critic sizes, learning rate, batch, loop and learned temperature of train.py's fast
preset (the release's fixed temperature is replaced by the automatic one EAR trains
with); every episode of collection samples its z once, half of the episodes from the
prior and half from the posterior given the task's context buffer.

Adaptation (`adapt_episodes`, oyster's protocol): episode 1 acts with z drawn from the
prior; after each episode its transitions join the context, the posterior is
recomputed, and the next episode acts with a fresh draw from it. Actions are
deterministic (the exploration is in z); the measurement acts with the posterior mean.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import envs
from policy import CheckpointError, TwinCritic, mlp, read_checkpoint, rollout, tanh_gaussian, tasks_from_checkpoint
from sac import SAC
from train import Trainer, saved_config

LATENT_DIM = 5  # dimension of z
CONTEXT_HIDDEN = [200, 200, 200]  # the context encoder's MLP
CONTEXT_SIZE = 100  # context transitions per task in every update
CONTEXT_CAPACITY = 400  # per task, the most recent prior-z transitions kept for context (two episodes)
REWARD_SCALE = 5.0  # multiplies r in the critics' target (train.py --pearl sets reward_scale)
KL_WEIGHT = 0.1  # weight of KL(q(z|c) || N(0, I)) in the encoder's loss
MIN_VARIANCE = 1e-7  # floor of each factor's variance


class ContextEncoder(nn.Module):
    """q(z | c): a Gaussian factor per context transition, multiplied together."""

    def __init__(self, context_dim: int, latent_dim: int = LATENT_DIM, hidden=CONTEXT_HIDDEN):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = mlp(context_dim, list(hidden), 2 * latent_dim)

    def forward(self, context: torch.Tensor):
        """context (N, C, context_dim) -> posterior mean and variance, each (N, latent)."""
        mean, raw = self.net(context).float().chunk(2, dim=-1)
        variance = F.softplus(raw).clamp(min=MIN_VARIANCE)
        posterior_variance = 1.0 / (1.0 / variance).sum(1)
        return posterior_variance * (mean / variance).sum(1), posterior_variance


def kl_to_prior(mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag variance) || N(0, I)) per row."""
    return 0.5 * (variance + mean.pow(2) - 1.0 - variance.log()).sum(-1)


class PearlAgent(nn.Module):
    """Context encoder and actor pi(a | o, z). `act(obs, z)` is the numpy interface
    policy.rollout drives, with z in place of EAR's LTE."""

    baseline = False  # it is conditioned on a vector, as EAR is on its LTE

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, hidden=(256, 256, 256),
                 latent_dim: int = LATENT_DIM, context_hidden=CONTEXT_HIDDEN):
        super().__init__()
        self.obs_dim, self.act_dim, self.num_tasks, self.latent_dim = obs_dim, act_dim, num_tasks, latent_dim
        self.encoder = ContextEncoder(obs_dim + act_dim + 1, latent_dim, context_hidden)
        self.actor = mlp(obs_dim + latent_dim, list(hidden), 2 * act_dim)
        self.env_name: str | None = None
        self.tasks: list = []

    def parts(self) -> list[nn.Module]:
        """The modules whose gradients are clipped each on its own."""
        return [self.encoder, self.actor]

    def forward(self, obs_z: torch.Tensor, task=None, deterministic: bool = False, lte_noise: float = 0.0):
        """Action and log-probability for observations with z appended. The input is
        detached: the actor's loss never reaches the context encoder."""
        return tanh_gaussian(self.actor(obs_z.detach()), deterministic)

    @torch.no_grad()
    def posterior(self, context) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of q(z | context) for one task's (C, obs+act+1) context;
        the prior N(0, I) for an empty one."""
        device = self.actor[0].weight.device
        context = torch.as_tensor(np.asarray(context, dtype=np.float32), device=device).reshape(1, -1, self.obs_dim + self.act_dim + 1)
        if context.shape[1] == 0:
            return np.zeros(self.latent_dim), np.ones(self.latent_dim)
        mean, variance = self.encoder(context)
        return mean[0].double().cpu().numpy(), variance[0].double().cpu().numpy()

    @torch.no_grad()
    def act(self, obs, z, deterministic: bool = True) -> np.ndarray:
        """Actions for observations (N, obs_dim) under latents z (N, latent_dim)."""
        device = self.actor[0].weight.device
        x = torch.cat([torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device),
                       torch.as_tensor(np.asarray(z), dtype=torch.float32, device=device)], dim=-1)
        return self(x, deterministic=deterministic)[0].cpu().numpy()


def build_networks(obs_dim: int, act_dim: int, num_tasks: int, cfg: dict):
    """PEARL's agent and its twin critic on [o, z, a] (no task id)."""
    agent = PearlAgent(obs_dim, act_dim, num_tasks, hidden=cfg["baseline_hidden"])
    critic = TwinCritic(obs_dim + LATENT_DIM, act_dim, 0, hidden=cfg["critic_hidden"], ensemble=cfg.get("critics", 2))
    return agent, critic


class ContextBuffer:
    """Per task, a ring of the last `capacity` (o, a, r) rows collected with z from the
    prior: what the encoder learns to read, as an adaptation's first episodes give it."""

    def __init__(self, num_tasks: int, row_dim: int, capacity: int = CONTEXT_CAPACITY):
        self.rows = torch.zeros(num_tasks, capacity, row_dim)
        self.count = torch.zeros(num_tasks, dtype=torch.long)  # rows ever written, per task

    def add(self, obs, action, reward, which: np.ndarray) -> None:
        """Append one step's rows of the tasks in the boolean mask `which`."""
        tasks = torch.as_tensor(np.flatnonzero(which))
        if len(tasks):
            row = torch.as_tensor(np.concatenate([obs, action, reward[:, None]], axis=1), dtype=torch.float32)
            self.rows[tasks, self.count[tasks] % self.rows.shape[1]] = row[tasks]
            self.count[tasks] += 1

    def ready(self) -> torch.Tensor:
        """Which tasks hold any context yet."""
        return self.count > 0

    def sample(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """`size` rows per task, uniformly from what each holds: (T, size, row_dim).
        Tasks with none give zeros (callers use the prior for them)."""
        filled = self.count.clamp(max=self.rows.shape[1]).clamp(min=1)
        index = (torch.rand(len(filled), size, generator=generator) * filled[:, None]).long()
        return self.rows[torch.arange(len(filled))[:, None], index]

    def state_dict(self) -> dict:
        return {"rows": self.rows.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.rows.copy_(state["rows"])
        self.count.copy_(state["count"])


class PearlSAC(SAC):
    """sac.SAC's update on observations with z appended, plus the encoder's KL term."""

    def update(self, batch: dict, context: torch.Tensor) -> dict:
        with self.autocast():
            mean, variance = self.policy.encoder(context)
            z = mean + variance.sqrt() * torch.randn_like(mean)  # reparameterised: the critic loss trains the encoder
            kl = KL_WEIGHT * kl_to_prior(mean, variance).sum()
            z_batch = z[batch["task"]]
            with_z = {**batch, "obs": torch.cat([batch["obs"], z_batch], dim=-1),
                      "next_obs": torch.cat([batch["next_obs"], z_batch.detach()], dim=-1)}
            stats = self._update(with_z, extra_loss=kl)
        return {**stats, "kl": kl.detach()}


class PearlTrainer(Trainer):
    """train.py's loop for PEARL: z per episode in collection, context per update from
    the context buffer, posterior means from it as the evaluation's inputs."""

    learner = PearlSAC
    build_networks = staticmethod(build_networks)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # each simulation's z for its current episode (a resumed run starts from the prior's mean)
        self.z = np.zeros((self.env.num_tasks, LATENT_DIM))
        self.from_prior = np.ones(self.env.num_tasks, dtype=bool)  # whether each current episode's z is a prior draw
        self.context = ContextBuffer(self.env.num_tasks, self.env.obs_dim + self.env.act_dim + 1)

    def context_sample(self) -> torch.Tensor:
        return self.context.sample(CONTEXT_SIZE, self.generator).to(self.cfg.device)

    def task_posteriors(self, sample: bool) -> np.ndarray:
        """Per task, z from the posterior given CONTEXT_SIZE transitions of its context
        buffer (a draw, or the mean); the prior (a draw, or its mean) while it is empty."""
        with torch.no_grad():
            mean, variance = self.sac.policy.encoder(self.context_sample())
            ready = self.context.ready().to(mean.device)[:, None]
            mean, variance = torch.where(ready, mean, 0.0), torch.where(ready, variance, 1.0)
            z = mean + variance.sqrt() * torch.randn_like(mean) if sample else mean
        return z.double().cpu().numpy()

    def collect(self, steps: int) -> None:
        T = self.env.num_tasks
        for _ in range(steps):
            starting = self.env.episode_step == 0
            if starting.any():  # a new episode samples its z: from the prior or the posterior, half each
                from_prior = self.env.rng.random(T) < 0.5
                posterior = self.task_posteriors(sample=True)
                prior = self.env.rng.standard_normal((T, LATENT_DIM))
                self.z[starting] = np.where(from_prior[:, None], prior, posterior)[starting]
                self.from_prior[starting] = from_prior[starting]
            action = self.sac.policy.act(self.obs, self.z, deterministic=False)
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            self.replay.add(self.obs, action, reward, info["final_obs"], terminated)
            self.context.add(self.obs, action, reward, self.from_prior)
            self.obs = next_obs
            self.env_steps += T
            self.episodes_finished += int(np.sum(terminated | truncated))

    def update(self) -> list[dict]:
        cfg = self.cfg
        losses = []
        for _ in range(cfg.updates_per_epoch):
            batch = self.replay.sample(cfg.batch_per_task, self.generator)
            losses.append(self.sac.update(batch, self.context_sample()))
        self.updates += cfg.updates_per_epoch
        return losses

    def evaluation_inputs(self):
        return self.task_posteriors(sample=False)

    def extra_state(self) -> dict:
        return {"context": self.context.state_dict(), "z": torch.as_tensor(self.z),
                "from_prior": torch.as_tensor(self.from_prior)}

    def load_extra_state(self, data: dict) -> None:
        self.context.load_state_dict(data["context"])
        self.z[:], self.from_prior[:] = data["z"].numpy(), data["from_prior"].numpy()


def is_checkpoint(path: str) -> bool:
    """Whether `path` holds a PEARL agent (train.py --pearl) rather than an EAR policy."""
    return bool(read_checkpoint(path)["config"].get("pearl"))


def load(path: str, env_name: str | None = None) -> PearlAgent:
    """A meta-trained PEARL agent (train.py --pearl), eval mode, CPU."""
    data = read_checkpoint(path)
    cfg, name = data["config"], data["env_name"]
    if not cfg.get("pearl"):
        raise CheckpointError(f"{path} is not a PEARL checkpoint; load it with policy.load")
    if env_name is not None and name != env_name:
        raise CheckpointError(f"{path} was trained on {name}, not {env_name}; pass --env {name} or a {env_name} checkpoint")
    agent, _ = build_networks(data["obs_dim"], data["act_dim"], len(data["tasks"]), vars(saved_config(cfg)))
    agent.load_state_dict(data["policy"])
    agent.env_name, agent.tasks, agent.config = name, tasks_from_checkpoint(data["tasks"]), cfg
    return agent.eval()


def adapt_episodes(agent: PearlAgent, task, budget: int, seed: int, measure_at=(), measure=None) -> dict:
    """PEARL's adaptation to `task` (module docstring) for `budget` episodes; returns
    the posterior mean, the cost and a curve. `measure(z)` (not charged) runs at
    every episode count in `measure_at`; its reports join the curve."""
    env = envs.make(agent.env_name, tasks=[task])
    rng = np.random.default_rng(seed)
    context, steps, best_return, curve = [], 0, -np.inf, []
    mean, variance = agent.posterior(np.zeros((0, agent.obs_dim + agent.act_dim + 1)))
    for episode in range(1, budget + 1):
        z = mean + np.sqrt(variance) * rng.standard_normal(agent.latent_dim)
        result = rollout(agent, env, z[None], deterministic=True, record=True, seed=seed * 1000 + episode)
        alive = np.isfinite(result["reward_steps"][:, 0])
        context.append(np.concatenate([result["obs"][alive, 0], result["action_steps"][alive, 0],
                                       result["reward_steps"][alive, 0, None]], axis=1))
        steps += int(alive.sum())
        best_return = max(best_return, float(result["return"][0]))
        mean, variance = agent.posterior(np.concatenate(context))
        point = {"episodes": episode, "env_steps": steps, "best_return": best_return}
        if measure is not None and episode in measure_at:
            point.update(measure(mean))
        curve.append(point)
    return {"z": mean, "posterior_variance": variance, "episodes": budget, "env_steps": steps, "curve": curve}
