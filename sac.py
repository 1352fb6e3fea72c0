"""Multi-task soft actor-critic: the update EAR is trained with (paper Sec. 3.3).

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
                  (Sec. 3.2; lte_noise = 0 reproduces the release's effective behaviour).
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
`ReferenceSAC` below is the same update written the textbook way (separate critics,
one optimiser and one backward pass per loss); the test suite runs both from the
same weights and checks that they agree after every step.

Hyperparameters (config fields in train.py):
    gamma 0.99        discount
    tau 0.005         Polyak rate of the target critics
    lr 3e-4           Adam step size of actor, critics and temperature
    grad_clip 10      max gradient norm per module
    lte_noise 0.02    std of the LTE noise in the actor loss
    reward_scale 1    multiplies r
    alpha_per_task    False: one shared temperature (the paper); True: one per task k,
                      J(alpha_k) over task k's transitions, and each transition's
                      target and actor loss use its own task's alpha_k
    actor_every 1     steps 1 and 4 (temperature, actor) run on every that-many-th
                      update only; the critics step on every update (a delayed
                      actor, as in TD3; 1 = the paper's)
    critics 2         how many Q_i; every min_i above runs over all of them (2: the
                      paper's clipped double Q; 1: a single critic and its target)
    batch_per_task    task-balanced batch: that many transitions of every task
                      (paper 128 x T = 1280; Ant 80 x 24 = 1920)
    task_focus 0      share of that batch dealt out in proportion to each task's
                      latest evaluation error instead of evenly (`task_batch`; 0 =
                      the paper's balanced batch)
    replay_per_task   per-task FIFO capacity (paper 1e6 / T)
    precision         "fp32", or "bf16" autocast for the matrix products (parameters,
                      log-probabilities and Adam stay fp32), or "auto": bf16 where a
                      bf16 product measures natively fast on this CPU (AMX,
                      AVX512-BF16), fp32 elsewhere; resolved on every machine afresh.

Speed: the twin critics run as one batched matmul per layer, the whole update
has no host synchronisation (losses are returned as tensors), the five modules'
gradient norms are clipped together in one foreach pass, the optimiser step is
fused, and Polyak averaging is one foreach lerp over all parameters.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from policy import CheckpointError, Policy, TwinCritic, mlp


class Replay:
    """Per-task FIFO ring buffers in one tensor (T, capacity, fields).

    All tasks are stepped together, so every task holds the same number of
    transitions, in time order, and one index tensor serves them all.
    Fields per transition: obs, action, reward, next_obs, terminal (a fall; never
    the 200-step cap, after which the target still bootstraps)."""

    def __init__(self, num_tasks: int, capacity: int, obs_dim: int, act_dim: int, device="cpu"):
        self.num_tasks, self.capacity = num_tasks, capacity
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.width = 2 * obs_dim + act_dim + 2
        self.data = torch.zeros(num_tasks, capacity, self.width, device=device)
        self.position, self.size = 0, 0

    def add(self, obs, action, reward, next_obs, terminal) -> None:
        """Store one transition per task; arguments are (T, ...) arrays."""
        row = torch.cat([torch.as_tensor(np.asarray(x), dtype=torch.float32).reshape(self.num_tasks, -1)
                         for x in (obs, action, reward, next_obs, terminal)], dim=1)
        self.data[:, self.position] = row.to(self.data.device)
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, per_task, generator: torch.Generator | None = None) -> dict:
        """Uniform draws from every task's buffer: `per_task` of each task (an int, a
        task-balanced batch), or per_task[k] of task k (a (T,) tensor of counts)."""
        oldest = self.position if self.size == self.capacity else 0
        if isinstance(per_task, int):
            offset = torch.randint(0, self.size, (self.num_tasks, per_task), generator=generator, device="cpu")
            index = ((oldest + offset) % self.capacity).to(self.data.device)
            rows = torch.gather(self.data, 1, index.unsqueeze(-1).expand(-1, -1, self.width)).reshape(-1, self.width)
            task = torch.arange(self.num_tasks, device=self.data.device).repeat_interleave(per_task)
        else:
            task = torch.arange(self.num_tasks).repeat_interleave(per_task)
            offset = torch.randint(0, self.size, (len(task),), generator=generator, device="cpu")
            task, index = task.to(self.data.device), ((oldest + offset) % self.capacity).to(self.data.device)
            rows = self.data[task, index]
        o, a = self.obs_dim, self.act_dim
        return {"obs": rows[:, :o], "action": rows[:, o:o + a], "reward": rows[:, o + a],
                "next_obs": rows[:, o + a + 1:2 * o + a + 1], "terminal": rows[:, -1], "task": task}

    def state_dict(self) -> dict:
        return {"data": self.data[:, :self.size].cpu().clone(), "position": self.position, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if state["data"].shape[-1] != self.width:
            raise CheckpointError(f"the checkpoint's replay holds {state['data'].shape[-1]} numbers per transition, "
                                  f"this code {self.width}: it was written by another version; train afresh")
        self.size, self.position = int(state["size"]), int(state["position"])
        self.data[:, :self.size] = state["data"].to(self.data.device)


def task_batch(errors, per_task: int, focus: float) -> torch.Tensor:
    """How many transitions of each task one batch of per_task x T holds: a share
    1 - focus task-balanced, and a share `focus` in proportion to each task's latest
    evaluation error, so the tasks furthest from their targets are replayed more
    (adaptive task sampling for multi-task RL). A task without an error measure
    (jump, stand) counts as the mean task; focus 0 is the paper's balanced batch."""
    errors = np.asarray(errors, dtype=np.float64)
    known = np.isfinite(errors)
    if not known.any() or errors[known].sum() <= 0:
        return torch.full((len(errors),), per_task, dtype=torch.long)
    errors = np.where(known, errors, errors[known].mean())
    share = (1 - focus) / len(errors) + focus * errors / errors.sum()
    total = per_task * len(errors)
    counts = np.floor(share * total).astype(np.int64)
    largest_remainders = np.argsort(counts - share * total)[:total - counts.sum()]
    counts[largest_remainders] += 1
    return torch.as_tensor(counts)


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


# --------------------------------------------------------------------------
# The machine at hand: precision and threads are resolved here, never inherited
# --------------------------------------------------------------------------


NATIVE_BF16_SPEEDUP = 1.3  # a bf16 product must beat fp32 by this much to count as native


@functools.lru_cache
def native_bf16() -> bool:
    """Whether bf16 matrix products run natively on this CPU, measured on the
    kernels torch will really use rather than read from the CPU's flags: those
    kernels also depend on the torch build and on ATEN_CPU_CAPABILITY /
    ONEDNN_MAX_CPU_ISA. At 320x256x256 a native product (AMX, AVX512-BF16) is
    about 2x fp32; an emulated one is 3-30x slower than fp32 (README, "Speed")."""
    flags = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if not (flags.get("amx_bf16") or flags.get("avx512_bf16")):
        return False
    return _matmul_seconds(torch.float32) > NATIVE_BF16_SPEEDUP * _matmul_seconds(torch.bfloat16)


def _matmul_seconds(dtype, repeats: int = 5) -> float:
    """Best of `repeats` timings of one (320, 256) x (256, 256) product."""
    a, b = torch.randn(320, 256).to(dtype), torch.randn(256, 256).to(dtype)
    a @ b  # first call: kernel selection and allocation
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def cpu_class() -> str:
    """What multiplies here: "AMX" or "AVX512-BF16" where bf16 runs natively,
    else the vector ISA of torch's kernels ("AVX512", "AVX2", ...)."""
    if native_bf16():
        return "AMX" if torch.cpu.get_capabilities().get("amx_bf16") else "AVX512-BF16"
    return torch.backends.cpu.get_cpu_capability()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def machine() -> dict:
    """The CPU every speed figure is measured on (printed beside it)."""
    return {"cpu": cpu_name(), "cpu_class": cpu_class(), "usable_cores": usable_cores(), "torch": torch.__version__}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a
    container's cpuset), not the machine's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_threads(threads: int) -> int:
    """0 becomes every usable core; any other count is kept."""
    return threads if threads > 0 else usable_cores()


def resolve_precision(precision: str, device: str) -> str:
    """"auto" becomes "bf16" where bf16 matrix products run natively (native_bf16),
    else "fp32". On CUDA and MPS bf16 is unmeasured here, so "auto" keeps fp32
    and `--set precision=bf16` opts in. An explicit bf16 on a CPU that would
    emulate it is kept, with one warning."""
    on_cpu = torch.device(device).type == "cpu"
    if precision == "auto":
        return "bf16" if on_cpu and native_bf16() else "fp32"
    if precision == "bf16" and on_cpu and not native_bf16():
        _warn_emulated_bf16()
    return precision


@functools.lru_cache
def _warn_emulated_bf16() -> None:
    print(f"warning: precision=bf16 on this CPU ({cpu_class()} kernels) is emulated, several times slower "
          f"than fp32; use --set precision=auto", file=sys.stderr, flush=True)


class SAC:
    """Networks, target critics, temperature and optimisers; `update` is steps 1-6 of the module docstring."""

    def __init__(self, policy: Policy, critic: TwinCritic, act_dim: int, cfg: dict, device="cpu"):
        self.policy, self.critic = policy.to(device), critic.to(device)
        self.target_critic = copy.deepcopy(critic).to(device).requires_grad_(False)
        # one shared temperature (the paper), or one per task (multi-task SAC practice)
        alpha_shape = (critic.num_tasks,) if cfg.get("alpha_per_task") else ()
        self.log_alpha = torch.zeros(alpha_shape, device=device, requires_grad=True)
        self.target_entropy = -float(act_dim)
        self.gamma, self.tau = cfg["gamma"], cfg["tau"]
        self.grad_clip, self.lte_noise = cfg["grad_clip"], cfg["lte_noise"]
        self.reward_scale = cfg["reward_scale"]
        self.actor_every = cfg.get("actor_every", 1)
        fused = torch.device(device).type in ("cpu", "cuda")  # elsewhere (mps, ...) the foreach Adam
        self.optimizer = torch.optim.Adam(list(policy.parameters()) + list(critic.parameters()),
                                          lr=cfg["lr"], fused=fused)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg["lr"])
        self.actor_modules = policy.parts()
        self.critic_params = list(critic.parameters())
        self.target_params = list(self.target_critic.parameters())
        self.precision = cfg["precision"]
        self.device_type = torch.device(device).type
        self.critic_steps = 0
        self.last_actor_stats: dict = {}

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def update(self, batch: dict) -> dict:
        """One SAC step on a task-balanced batch (steps 1-6 of the module docstring)."""
        with self.autocast():  # one region, so each weight is cast to bf16 once per update
            return self._update(batch)

    def _update(self, batch: dict, extra_loss=None) -> dict:
        """Steps 1-6; `extra_loss` joins the backward pass (PEARL's KL term, pearl.py)."""
        task = batch["task"]
        actor_step = self.critic_steps % self.actor_every == 0
        self.critic_steps += 1
        if actor_step:
            new_action, log_prob = self.policy(batch["obs"], task, lte_noise=self.lte_noise)
            new_action, log_prob = new_action.float(), log_prob.float()
            # 1. temperature
            entropy_gap = self.entropy_gap(log_prob.detach(), task)
            alpha_loss = -(self.log_alpha.detach() * entropy_gap).mean()
            self.log_alpha.grad = -entropy_gap  # dJ/dlog(alpha), written out: no second backward pass
            self.alpha_optimizer.step()
        temperatures = self.log_alpha.detach().exp()
        alpha = temperatures[task] if temperatures.dim() else temperatures  # each transition's own task's

        # 2.-3. target and critic loss; 4. actor loss
        critic_loss, q = self.critic_loss(batch, alpha)
        loss = critic_loss
        if actor_step:
            actor_loss = self.actor_loss(batch, new_action, log_prob, alpha)
            loss = loss + actor_loss
            self.last_actor_stats = {"actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach(),
                                     "entropy": -log_prob.detach().mean()}

        if extra_loss is not None:
            loss = loss + extra_loss
        # 5. clipped, fused Adam step on actor and critics (critics only between actor steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norms_(self.gradient_groups(), self.grad_clip)
        self.optimizer.step()

        # 6. Polyak averaging of the target critics, all tensors at once
        with torch.no_grad():
            torch._foreach_lerp_(self.target_params, self.critic_params, self.tau)
        return {"critic_loss": critic_loss.detach() / self.critic.ensemble, **self.last_actor_stats,
                "alpha": temperatures.mean(), "q": q.detach().mean()}

    def entropy_gap(self, log_prob, task) -> torch.Tensor:
        """E[log pi + H_target]: over the batch for one shared temperature, else
        per task (the mean over that task's transitions)."""
        gap = log_prob + self.target_entropy
        if self.log_alpha.dim() == 0:
            return gap.mean()
        size = self.log_alpha.shape[0]
        counts = torch.bincount(task, minlength=size).clamp(min=1).to(gap.dtype)
        return torch.zeros(size, dtype=gap.dtype, device=gap.device).index_add_(0, task, gap) / counts

    def gradient_groups(self) -> list[list[torch.Tensor]]:
        """The gradients of each module that is clipped on its own: state encoder,
        task encoder, decoder (or the baseline's one network), and each critic."""
        groups = [[p.grad for p in module.parameters() if p.grad is not None] for module in self.actor_modules]
        critic_grads = [p.grad for p in self.critic_params]  # stacked: member i is g[i]
        return groups + [[g[i] for g in critic_grads] for i in range(self.critic.ensemble)]

    def critic_loss(self, batch: dict, alpha):
        """sum_i J(Q_i) against the target y (steps 2 and 3), and Q(o, a)."""
        obs, action, task = batch["obs"], batch["action"], batch["task"]
        reward = self.reward_scale * batch["reward"]
        with torch.no_grad(), self.autocast():
            next_action, next_log_prob = self.policy(batch["next_obs"], task)
            next_q = self.target_critic(batch["next_obs"], next_action, task).float().min(0).values
            target = reward + self.gamma * (1 - batch["terminal"]) * (next_q - alpha * next_log_prob.float())
        with self.autocast():
            # the sum of the critics' MSE: each critic gets its own gradient
            q = self.critic(obs, action, task).float()
            loss = F.mse_loss(q, target.unsqueeze(0).expand_as(q), reduction="none").mean(1).sum()
        return loss, q

    def actor_loss(self, batch: dict, new_action, log_prob, alpha):
        """J(pi) (step 4), given the actor's sample a~ and log pi(a~) at o, through
        the critics' detached weights: only the actor learns from it."""
        with self.autocast():
            # obs detached too: in PEARL it carries z, and the actor loss must not train the context encoder
            q_new = self.critic(batch["obs"].detach(), new_action, batch["task"], detach=True).float().min(0).values
            return (alpha * log_prob - q_new).mean()

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


class ReferenceSAC:
    """The same update (steps 1-6 of the module docstring), written the textbook way,
    as Spinning Up's and CleanRL's SAC write it: two separate critic networks with
    their own targets, one Adam per module, one backward pass per loss, Polyak in a
    Python loop. It starts from a copy of a SAC's weights: the test suite checks that
    one step of each gives the same losses and parameters, which proves SAC.update's
    fusions change nothing but the speed, and `train.py --benchmark` times both.
    fp32, one shared temperature and an actor step on every update (the paper's)."""

    def __init__(self, sac: SAC):
        if sac.log_alpha.dim() or sac.actor_every != 1 or sac.critic.ensemble != 2:
            raise ValueError("ReferenceSAC is the paper's update: one shared alpha, actor_every=1, two critics")
        self.policy = copy.deepcopy(sac.policy)
        self.critics = [self._member(sac.critic, i) for i in range(sac.critic.ensemble)]
        self.targets = [self._member(sac.target_critic, i) for i in range(sac.critic.ensemble)]
        self.log_alpha = sac.log_alpha.detach().clone().requires_grad_(True)
        lr = sac.optimizer.param_groups[0]["lr"]
        self.actor_modules = self.policy.parts()
        self.actor_optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.critic_optimizers = [torch.optim.Adam(q.parameters(), lr=lr) for q in self.critics]
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=lr)
        self.num_tasks, self.target_entropy = sac.critic.num_tasks, sac.target_entropy
        self.gamma, self.tau, self.grad_clip = sac.gamma, sac.tau, sac.grad_clip
        self.lte_noise, self.reward_scale = sac.lte_noise, sac.reward_scale

    @staticmethod
    def _member(critic: TwinCritic, i: int) -> torch.nn.Sequential:
        """Critic i of a TwinCritic as an ordinary MLP with the same weights."""
        layers = critic.layers
        net = mlp(layers[0].weight.shape[1], [layer.weight.shape[2] for layer in layers[:-1]], 1)
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for linear, stacked in zip(linears, layers):
                linear.weight.copy_(stacked.weight[i].T)
                linear.bias.copy_(stacked.bias[i, 0])
        return net

    def q(self, nets, obs, action, onehot) -> list[torch.Tensor]:
        x = torch.cat([obs, action, onehot], dim=1)
        return [net(x).squeeze(-1) for net in nets]

    def update(self, b: dict) -> dict:
        onehot = F.one_hot(b["task"], self.num_tasks).float()
        # 1. temperature
        new_action, log_prob = self.policy(b["obs"], b["task"], lte_noise=self.lte_noise)
        alpha_loss = -(self.log_alpha * (log_prob + self.target_entropy).detach()).mean()
        self.alpha_optimizer.zero_grad()
        alpha_loss.backward()
        self.alpha_optimizer.step()
        alpha = self.log_alpha.detach().exp()
        # 2. target
        with torch.no_grad():
            next_action, next_log_prob = self.policy(b["next_obs"], b["task"])
            next_q = torch.min(*self.q(self.targets, b["next_obs"], next_action, onehot))
            y = self.reward_scale * b["reward"] + self.gamma * (1 - b["terminal"]) * (next_q - alpha * next_log_prob)
        # 3. critic losses
        critic_losses = [F.mse_loss(q, y) for q in self.q(self.critics, b["obs"], b["action"], onehot)]
        # 4. actor loss
        actor_loss = (alpha * log_prob - torch.min(*self.q(self.critics, b["obs"], new_action, onehot))).mean()
        # 5. clipped Adam steps, each module on its own
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        for module in self.actor_modules:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.grad_clip)
        self.actor_optimizer.step()
        for q, optimizer, loss in zip(self.critics, self.critic_optimizers, critic_losses):
            optimizer.zero_grad()  # drops what the actor loss left in the critic
            loss.backward()
            torch.nn.utils.clip_grad_norm_(q.parameters(), self.grad_clip)
            optimizer.step()
        # 6. Polyak
        with torch.no_grad():
            for q, target in zip(self.critics, self.targets):
                for p, p_target in zip(q.parameters(), target.parameters()):
                    p_target.mul_(1 - self.tau).add_(self.tau * p)
        return {"critic_loss": (critic_losses[0] + critic_losses[1]).detach() / 2,
                "actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach()}
