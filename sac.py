"""Multi-task soft actor-critic: the update EAR is trained with (paper Sec. 3.3, spec 4).

Notation: o observation, a action, k task id, r reward, d terminal (a fall, never
the 200-step cap), pi the EAR actor (state encoder + task encoder + decoder),
Q_1, Q_2 the twin critics on [o, a, onehot(k)], Qbar_i their Polyak-averaged
targets, alpha the one shared temperature.

One call of `SAC.update(batch)` performs, in the authors' order:

 1. temperature   J(alpha) = E[ -log alpha * (log pi(a~|o,k) + H_target) ],  a~ ~ pi(.|o, z~_k)
                  H_target = -|A| (target entropy), log alpha starts at 0.
 2. target        y = r + gamma (1 - d) ( min_i Qbar_i(o', a', k) - alpha log pi(a'|o',k) ),
                  a' ~ pi(.|o', z_k) with the same task's (noise-free) LTE.
 3. critic loss   J(Q_i) = E[ (Q_i(o, a, k) - y)^2 ]           (MSE, both critics)
 4. actor loss    J(pi)  = E[ alpha log pi(a~|o,k) - min_i Q_i(o, a~, k) ]
                  where the actor sees the noisy LTE z~ = normalize(z_k + N(0, lte_noise^2))
                  (spec 3; lte_noise = 0 reproduces the release's effective behaviour).
                  The gradient reaches the state encoder, task encoder and decoder
                  only through this loss: the critics never see LSE or LTE.
 5. steps         Adam (lr 3e-4) on actor and critics, after clipping each module's
                  gradient norm to 10 (state encoder, task encoder, decoder, Q_1, Q_2).
 6. Polyak        Qbar <- (1 - tau) Qbar + tau Q, tau = 0.005, after every update
                  (critics only: no target copies of the policy).

Both critic gradients and the actor gradient are taken at the parameters before
this update's steps, exactly as in the release's order; computing them in one
backward pass (the actor's Q evaluation uses detached critic weights) changes
nothing but the speed. Likewise one fused Adam over actor and critic parameters
is the same arithmetic as one Adam per module with equal hyperparameters.

Hyperparameters (config fields in train.py):
    gamma 0.99        discount
    tau 0.005         Polyak rate of the target critics
    lr 3e-4           Adam step size of actor, critics and temperature
    grad_clip 10      max gradient norm per module
    lte_noise 0.02    std of the LTE noise in the actor loss
    reward_scale 1    multiplies r
    batch_per_task    task-balanced batch: that many transitions of every task
                      (paper 128 x T = 1280; Ant 80 x 24 = 1920)
    replay_per_task   per-task FIFO capacity (paper 1e6 / T)
    precision         "fp32", or "bf16" autocast for the matrix products (parameters,
                      log-probabilities and Adam stay fp32), or "auto": bf16 on CPUs
                      that multiply bf16 natively (AMX, AVX512-BF16), fp32 elsewhere.

Speed: the twin critics run as one batched matmul per layer, the whole update
has no host synchronisation (losses are returned as tensors), the five modules'
gradient norms are clipped together in one foreach pass, the optimiser step is
fused, and Polyak averaging is one foreach lerp over all parameters.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import numpy as np
import torch
import torch.nn.functional as F

from policy import Policy, TwinCritic


class Replay:
    """Per-task FIFO ring buffers in one tensor (T, capacity, fields).

    All tasks are stepped together, so every task holds the same number of
    transitions, in time order, and one index tensor serves them all.
    Fields per transition: obs, action, reward, next_obs, terminal (a fall),
    episode_end (terminal or the 200-step cap)."""

    def __init__(self, num_tasks: int, capacity: int, obs_dim: int, act_dim: int, device="cpu"):
        self.num_tasks, self.capacity = num_tasks, capacity
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.width = 2 * obs_dim + act_dim + 3
        self.data = torch.zeros(num_tasks, capacity, self.width, device=device)
        self.position, self.size = 0, 0

    def add(self, obs, action, reward, next_obs, terminal, episode_end=None) -> None:
        """Store one transition per task; arguments are (T, ...) arrays."""
        if episode_end is None:
            episode_end = terminal
        row = torch.cat([torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(self.num_tasks, -1)
                         for x in (obs, action, reward, next_obs, terminal, episode_end)], dim=1)
        self.data[:, self.position] = row.to(self.data.device)
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, per_task: int, generator: torch.Generator | None = None,
               n_step: int = 1, gamma: float = 0.99) -> dict:
        """A task-balanced batch: `per_task` uniform draws from every task's buffer.

        With n_step > 1 each draw is the start of n consecutive transitions of
        the same simulation, cut at the end of its episode:
          reward   = sum_i gamma^i r_{t+i}  (i up to the last step of the episode within n)
          next_obs = the observation after that last step, terminal its fall flag,
          discount = gamma^(steps used), so the target is reward + discount (1 - terminal) V(next_obs).
        With n_step = 1 this is the ordinary one-step transition and discount = gamma."""
        n = min(n_step, self.size)
        oldest = self.position if self.size == self.capacity else 0
        offset = torch.randint(0, self.size - n + 1, (self.num_tasks, per_task), generator=generator, device="cpu")
        index = (oldest + offset.unsqueeze(-1) + torch.arange(n)) % self.capacity  # (T, B, n)
        index = index.to(self.data.device).reshape(self.num_tasks, -1, 1).expand(-1, -1, self.width)
        rows = torch.gather(self.data, 1, index).reshape(self.num_tasks * per_task, n, self.width)
        o, a = self.obs_dim, self.act_dim
        reward, terminal, episode_end = rows[..., o + a], rows[..., -2], rows[..., -1]
        # still_in_episode[:, i]: no episode ended before step i
        still_in_episode = torch.cumprod(torch.cat([torch.ones_like(episode_end[:, :1]), 1 - episode_end[:, :-1]], 1), 1)
        powers = gamma ** torch.arange(n, dtype=reward.dtype, device=reward.device)
        last = (still_in_episode.sum(1) - 1).long()  # index of the last step used
        pick = lambda x: x[torch.arange(x.shape[0], device=x.device), last]
        task = torch.arange(self.num_tasks, device=self.data.device).repeat_interleave(per_task)
        return {"obs": rows[:, 0, :o], "action": rows[:, 0, o:o + a],
                "reward": (reward * still_in_episode * powers).sum(1),
                "next_obs": pick(rows[..., o + a + 1:2 * o + a + 1]), "terminal": pick(terminal),
                "discount": gamma ** (last + 1).to(reward.dtype), "task": task}

    def state_dict(self) -> dict:
        return {"data": self.data[:, :self.size].cpu().clone(), "position": self.position, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.position = int(state["size"]), int(state["position"])
        self.data[:, :self.size] = state["data"].to(self.data.device)


def clip_grad_norms_(groups: list[list[torch.Tensor]], max_norm: float) -> None:
    """Scale the gradients of each group so that the group's norm is at most
    `max_norm`: torch.nn.utils.clip_grad_norm_ applied to every group, in a
    handful of ops for all groups together (a group is one module's gradients)."""
    grads = [g for group in groups for g in group]
    group_index = _group_index(tuple(len(group) for group in groups), grads[0].device)
    squares = torch.stack(torch._foreach_norm(grads)).square()
    group_norms = torch.zeros(len(groups), device=grads[0].device).index_add_(0, group_index, squares).sqrt()
    scale = (max_norm / (group_norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(scale[group_index].unbind()))


@functools.lru_cache
def _group_index(sizes: tuple, device: torch.device) -> torch.Tensor:
    """Which group each gradient belongs to; made once (no host-to-GPU copy per update)."""
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)


def resolve_precision(precision: str, device: str) -> str:
    """"auto" becomes "bf16" where bf16 matrix products run natively and pay
    (CPUs with AMX or AVX512-BF16: 4-5x fp32 at 256-wide layers), else "fp32".
    Elsewhere bf16 would be emulated, slower than fp32; on CUDA it is unmeasured
    here, so "auto" keeps fp32 and `--set precision=bf16` opts in."""
    if precision != "auto":
        return precision
    if torch.device(device).type != "cpu":
        return "fp32"
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return "bf16" if capabilities.get("amx_bf16") or capabilities.get("avx512_bf16") else "fp32"


class SAC:
    """Networks, target critics, temperature and optimisers; `update` is spec 4."""

    def __init__(self, policy: Policy, critic: TwinCritic, act_dim: int, cfg: dict, device="cpu"):
        self.policy, self.critic = policy.to(device), critic.to(device)
        self.target_critic = copy.deepcopy(critic).to(device).requires_grad_(False)
        self.log_alpha = torch.zeros((), device=device, requires_grad=True)
        self.target_entropy = -float(act_dim)
        self.gamma, self.tau = cfg["gamma"], cfg["tau"]
        self.grad_clip, self.lte_noise = cfg["grad_clip"], cfg["lte_noise"]
        self.reward_scale = cfg["reward_scale"]
        fused = device != "mps"
        self.optimizer = torch.optim.Adam(list(policy.parameters()) + list(critic.parameters()),
                                          lr=cfg["lr"], fused=fused)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg["lr"])
        self.actor_modules = ([policy.net] if policy.baseline
                              else [policy.state_encoder, policy.task_encoder, policy.decoder])
        self.critic_params = list(critic.parameters())
        self.target_params = list(self.target_critic.parameters())
        self.precision = cfg["precision"]
        self.device_type = torch.device(device).type

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def update(self, batch: dict) -> dict:
        """One SAC step on a task-balanced batch (steps 1-6 of the module docstring)."""
        with self.autocast():  # one region, so each weight is cast to bf16 once per update
            return self._update(batch)

    def _update(self, batch: dict) -> dict:
        new_action, log_prob = self.policy(batch["obs"], batch["task"], lte_noise=self.lte_noise)
        new_action, log_prob = new_action.float(), log_prob.float()

        # 1. temperature
        entropy_gap = (log_prob.detach() + self.target_entropy).mean()
        alpha_loss = -self.log_alpha.detach() * entropy_gap
        self.log_alpha.grad = -entropy_gap  # dJ/dlog(alpha), written out: no second backward pass
        self.alpha_optimizer.step()
        alpha = self.log_alpha.detach().exp()

        # 2.-4. target, critic loss, actor loss
        critic_loss, actor_loss, q = self.losses(batch, new_action, log_prob, alpha)

        # 5. clipped, fused Adam step on actor and critics
        self.optimizer.zero_grad(set_to_none=True)
        (actor_loss + critic_loss).backward()
        clip_grad_norms_(self.gradient_groups(), self.grad_clip)
        self.optimizer.step()

        # 6. Polyak averaging of the target critics, all tensors at once
        with torch.no_grad():
            torch._foreach_lerp_(self.target_params, self.critic_params, self.tau)
        return {"critic_loss": critic_loss.detach() / 2, "actor_loss": actor_loss.detach(),
                "alpha": alpha, "alpha_loss": alpha_loss.detach(), "q": q.detach().mean(),
                "entropy": -log_prob.detach().mean()}

    def gradient_groups(self) -> list[list[torch.Tensor]]:
        """The gradients of each module that is clipped on its own: state encoder,
        task encoder, decoder (or the baseline's one network), and each critic."""
        groups = [[p.grad for p in module.parameters() if p.grad is not None] for module in self.actor_modules]
        critic_grads = [p.grad for p in self.critic_params]  # stacked: member i is g[i]
        return groups + [[g[i] for g in critic_grads] for i in range(self.critic.ensemble)]

    def losses(self, batch: dict, new_action, log_prob, alpha):
        """Critic loss J(Q_1) + J(Q_2), actor loss J(pi) and Q(o, a) for a batch,
        given the actor's sample a~ and log pi(a~) at o and the temperature."""
        obs, action, task = batch["obs"], batch["action"], batch["task"]
        reward = self.reward_scale * batch["reward"]
        # 2. target
        with torch.no_grad(), self.autocast():
            next_action, next_log_prob = self.policy(batch["next_obs"], task)
            next_q = self.target_critic(batch["next_obs"], next_action, task).float().min(0).values
            discount = batch.get("discount", self.gamma)
            target = reward + discount * (1 - batch["terminal"]) * (next_q - alpha * next_log_prob.float())
        with self.autocast():
            # 3. critic loss (sum of the two critics' MSE: each critic gets its own gradient)
            q = self.critic(obs, action, task).float()
            critic_loss = F.mse_loss(q, target.unsqueeze(0).expand_as(q), reduction="none").mean(1).sum()
            # 4. actor loss, through the critics' detached weights
            q_new = self.critic(obs, new_action, task, detach=True).float().min(0).values
            actor_loss = (alpha * log_prob - q_new).mean()
        return critic_loss, actor_loss, q

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "target_critic": self.target_critic.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "optimizer": self.optimizer.state_dict(), "alpha_optimizer": self.alpha_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
