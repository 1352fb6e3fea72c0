"""Few-shot adaptation in the latent task embedding space (paper Sec. 4.3 and 5.3).

EAR's headline claim: after multi-task training, a new task of the family is solved
by searching only the 3-d latent task embedding (LTE) on the unit sphere S^2, with
the state encoder and the action decoder frozen. This module runs that search, and,
as honest baselines, spends the same environment steps on SAC instead.

    python adapt.py --task 4.5                        # HalfCheetah-Vel, checkpoints/halfcheetah-vel.pt
    python adapt.py --env ant-dir --task 77           # a direction in degrees
    python adapt.py --env halfcheetah-runjump --task run:3.5
    python adapt.py --task 7.2 --method all --out results/adapt-7.2.json --plot
    python adapt.py --task 7.2 --prior none           # the search sees episode returns only
    python adapt.py --checkpoint checkpoints/halfcheetah-vel-baseline.pt --task 7.2   # OHE: the one-hot baseline
    python adapt.py --checkpoint checkpoints/halfcheetah-vel-pearl.pt --task 7.2      # PEARL (pearl.py)
    python adapt.py --benchmark [--quick]             # test tasks 3.6, 7.2, 9.5 and 0.5, 11; every method
    python adapt.py --benchmark release               # EAR, OHE and PEARL on the release's protocol, 3 seeds

Without --env the family is the checkpoint's; without --checkpoint it is
checkpoints/<env>.pt. A task outside the training range runs with a warning.

Methods (--method):
  bracket   (default; at most 45 episodes). Start where the embedding space says the
            task is: the normalised interpolation (1-w) z_a + w z_b of the LTEs of the
            two training tasks that bracket it (velocities: the neighbours with the
            linear weight w; Ant: the neighbouring directions on the circle; RunJump:
            the neighbours among the training tasks of the same kind). Round 1
            evaluates that start and points on the great circle through z_a and z_b,
            spaced evenly up to 0.75 of their angle on either side (a 1-d line search).
            A task with no bracket (out of range, or a kind the checkpoint never saw)
            instead evaluates every training LTE once and takes the best; its line is
            the great circle through the two edge LTEs (out of range) or through the
            two best ones. Then rounds of a local pattern search around the incumbent:
            up to 4 points along the line direction (+-s, +-2s) and the rest evenly
            spaced on a circle of angular radius s; s halves after a round that found
            nothing better. All candidates of a round run at once, one simulation each,
            with deterministic actions; a third of the budget goes to round 1, the rest
            to rounds of at most 10.
  The one-hot baseline (OHE, train.py --baseline) adapts with bracket or cem too: the
            same searches over unit vectors in its task-input space R^T, where the
            training tasks are the one-hot rows (the authors' working code runs CEM there);
            its finetune trains the whole pretrained network on one fixed task input
            (the bracket start in R^T, else the first one-hot row), scratch is as for EAR.
  --prior none (every method sees returns only, as a meta-RL method does): bracket
            never reads the task's value or kind and starts as for a task with no
            bracket (every training LTE once, then the local search around the best);
            finetune starts from the first training LTE. cem and scratch never read it.
  cem       the authors' search, exactly as their release runs it: 6 elites uniform on S^2; 10 rounds;
            each round 90 candidates = the elites tiled 15 times, all but the first 6
            perturbed by N(0, 0.5^2) and re-normalised; one stochastic 200-step episode
            each, all 90 in one env of this task only; keep the top 6. 900 episodes (the
            release's 901st is its final test, here the common final measurement).
  scratch   single-task SAC from zero (a plain MLP policy on the observation, the
            checkpoint's sizes and SAC settings) for the same environment steps as
            bracket: 1000 warm-up steps, then one update per step, batch 256.
  finetune  the same SAC on the whole pretrained policy: state encoder and decoder
            copied, the task encoder reduced to one trainable LTE that starts at the
            bracket interpolation (else the edge training LTE of that kind), a fresh
            critic. The temperature starts at 0.05 instead of 1: the pretrained policy is
            nearly deterministic, and alpha = 1 would first drive it to high entropy.
  pearl     (a PEARL checkpoint, train.py --pearl; its only method, chosen by default;
            45 episodes) the meta-RL baseline's own protocol (pearl.py): the first
            episode acts with z from the prior, each later one with a draw from the
            posterior given every transition so far; it sees rewards only. The final
            measurement acts with the posterior mean.
  Both SAC baselines are evaluated every 1000 steps with 3 deterministic episodes that
  are not charged to their budget (in their favour), and report their best snapshot.

Networks are never changed by bracket or cem (no gradients; parameters stay
bit-identical) and every candidate is a unit vector. Every evaluation goes through
policy.rollout. Every method ends with the same measurement, not charged to its
budget: the chosen LTE (or network) runs --eval-episodes deterministic episodes in
parallel simulations with fresh reset noise.

Report (printed; --out FILE writes it as JSON; with --method all, {"results": [...]}):
  env, task, method, prior, checkpoint, seed, extrapolates (task outside the training range;
                        reported with either prior, used by the search with --prior task only)
  episodes, env_steps   cost of the adaptation: episodes run and env steps taken
  lte                   the LTE found (3 floats; finetune: its learned LTE; scratch: null;
                        pearl: the posterior mean of z, 5 floats)
  start_lte             the bracket interpolation (null when there is none)
  return                mean return of the final deterministic measurement
  velocity | heading    mean forward velocity in m/s | Ant: heading of the mean x-y velocity, deg
  error                 |velocity - target| in m/s or heading error in deg (null for jump/stand)
  height                jump and stand tasks: mean root height
  eval_episodes         episodes of the final measurement
  curve                 [{episodes, env_steps, best_return}] after every round: the best return
                        seen so far (bracket: its deterministic search episodes; cem: its
                        stochastic ones; scratch/finetune: their periodic evaluations;
                        pearl: after every episode, with "error" and "return_measured" of the
                        posterior mean after 1, 2, 3, 5, 10, 20, 45 episodes)
  wall_clock_s          seconds for the whole call, final measurement included
--plot draws best return against environment steps for the methods run (PNG next to --out).

Benchmark (--benchmark): every method on the family's test tasks (HalfCheetah-Vel: the
authors' 3.6, 7.2, 9.5, and 0.5 and 11 outside the training range 1..10), SAC baselines
with the env steps the bracket search used; prints a table and writes
results/adapt_benchmark.json (or --out). Target for bracket on in-range tasks: velocity
error <= 0.3 m/s or return within 5% of cem's, in <= 45 episodes; out-of-range tasks
are reported, not tuned. --quick shrinks every budget to a smoke test on the first and
last test task only.

Release protocol (--benchmark release): the comparison the authors' working code
runs, on the test tasks it draws (HalfCheetah-Vel: 10 velocities randint(0, 100) / 10;
Hopper and Walker: 5 of 0.1..2.0; Ant: 5 directions; a fixed seed, envs.py
release_test_tasks), for adaptation seeds 1, 3, 5 (--seeds): EAR (--checkpoint) by
bracket with and without the task's value (--prior task / none), by cem and by
finetune; OHE (--baseline-checkpoint, default <env>-baseline.pt beside it) the same
way; PEARL (--pearl-checkpoint, default <env>-pearl.pt) by its own protocol. Each
search runs once per budget of 1, 2, 3, 5, 10, 20, 45 episodes (cem: its 900);
PEARL and finetune run 45 episodes once and are measured after each of those counts
(finetune: its best snapshot so far, which until its first evaluation that beats the
start is the pretrained network at the start input). Writes
results/adapt_release_<env>.json (or --out; rows are reused on a rerun with the same
checkpoint files, so an interrupted benchmark resumes), and beside it the figure of
mean error against episodes with a 95% bootstrap interval over seeds (.png) and the
table (.md). A checkpoint
that is not there is left out with a note.

Python: adapt(policy, task, method="bracket", budget_episodes=None, seed=0) -> report
dict; main(argv=None).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import torch

import envs
from envs import ArgumentParser
import pearl
from policy import CheckpointError, atomic_write_text, build_networks, load, rollout, unit
from sac import cpu_class, machine, resolve_precision, resolve_threads
from train import Config, Trainer, saved_config

METHODS = ("bracket", "cem", "scratch", "finetune")  # for an EAR checkpoint (OHE: bracket, cem)
PRIORS = ("task", "none")  # what a search may know of the new task: its value, or nothing (rewards only)
DEFAULT_BUDGET = {"bracket": 45, "cem": 900, "scratch": 45, "finetune": 45, "pearl": 45}  # episodes
CURVE_EPISODES = (1, 2, 3, 5, 10, 20, 45)  # pearl: the error is measured after these many episodes
QUICK_EPISODES = (1, 3)  # --benchmark release --quick: the budgets of a smoke test
CEM_ELITES, CEM_TILES, CEM_SIGMA = 6, 15, 0.5
FIRST_ROUND_SPAN = 0.75  # bracket round 1 reaches this fraction of angle(z_a, z_b) beyond the start
MAX_ROUND = 10
SAC_BATCH, SAC_WARMUP, SAC_EVAL_EVERY, SAC_EVAL_EPISODES, FINETUNE_ALPHA = 256, 1000, 1000, 3, 0.05
FINAL_SEED = 1_000_000  # the final measurement's reset noise differs from every search episode's


# --------------------------------------------------------------------------
# The sphere
# --------------------------------------------------------------------------


def tangent(x, v):
    """Unit direction of v in the tangent plane of S^2 at x (None if v is parallel to x)."""
    d = np.asarray(v, np.float64) - np.dot(v, x) * x
    n = np.linalg.norm(d)
    return d / n if n > 1e-9 else None


def move(x, direction, angle) -> np.ndarray:
    """The point at geodesic distance `angle` from x along the tangent `direction`."""
    return unit(math.cos(angle) * x + math.sin(angle) * direction)


def angle_between(a, b) -> float:
    return float(np.arccos(np.clip(np.dot(a, b), -1.0, 1.0)))


# --------------------------------------------------------------------------
# Where a new task sits among the training tasks
# --------------------------------------------------------------------------


def _kind_value(family: str, task):
    return task if isinstance(task, tuple) else (envs.FAMILIES[family].number_kind, float(task))


def task_inputs(policy) -> np.ndarray:
    """The training tasks' points in the space a search explores: EAR's unit LTEs on
    S^2, or for the one-hot baseline (OHE) its one-hot task inputs, the corners of the
    unit sphere in R^T (the authors' working code searches that space with CEM).
    PEARL has no task input; for it these rows only place the training tasks."""
    if policy.baseline or isinstance(policy, pearl.PearlAgent):
        return np.eye(policy.num_tasks)
    return policy.task_embeddings


def reward_only_prior(policy) -> dict:
    """What a search knows with rewards only (--prior none): the training LTEs, not the
    new task's value or kind. The bracket search then evaluates every training LTE
    once and searches around the best; finetune starts from the first training LTE."""
    E = task_inputs(policy)
    return {"start": None, "line": None, "guess": E[0], "extrapolates": False, "reason": ""}


def bracket_prior(policy, task) -> dict:
    """What the training embeddings say about `task` before any episode is run:
    start (the bracket interpolation, or None), line (two LTEs whose great circle to
    search along, or None), guess (start, else the nearest training LTE of the kind),
    extrapolates and a one-line reason."""
    family, E = policy.env_name, task_inputs(policy)
    kind, value = _kind_value(family, task)
    pairs = [(i, _kind_value(family, t)[1]) for i, t in enumerate(policy.tasks) if _kind_value(family, t)[0] == kind]
    prior = {"start": None, "line": None, "guess": E[0], "extrapolates": False, "reason": ""}
    if not pairs:
        prior.update(extrapolates=True, reason=f"the checkpoint has no {kind} task")
        return prior
    pairs.sort(key=lambda p: p[1])
    ids, values = [p[0] for p in pairs], np.array([p[1] for p in pairs])
    if kind == "dir":  # directions: neighbours on the circle, always bracketed
        offsets = (value - values) % 360.0
        a = int(np.argmin(offsets))
        b = (a + 1) % len(ids)
        gap = (values[b] - values[a]) % 360.0 or 360.0
        weight = offsets[a] / gap
    elif len(ids) >= 2 and values[0] <= value <= values[-1]:
        b = max(1, int(np.searchsorted(values, value)))
        a = b - 1
        weight = (value - values[a]) / (values[b] - values[a])
    else:
        edge = 0 if value < values[0] else len(ids) - 1
        prior.update(guess=E[ids[edge]], extrapolates=True,
                     reason=f"{kind} {value:g} lies outside the training range [{values[0]:g}, {values[-1]:g}]")
        if len(ids) >= 2:
            inner = 1 if edge == 0 else edge - 1
            prior["line"] = (E[ids[inner]], E[ids[edge]])
        return prior
    za, zb = E[ids[a]], E[ids[b]]
    start = unit((1 - weight) * za + weight * zb)
    prior.update(start=start, guess=start, line=(za, zb))
    return prior


# --------------------------------------------------------------------------
# Evaluating candidate embeddings
# --------------------------------------------------------------------------


def evaluate_ltes(policy, task, ltes, deterministic, seed, env_cache) -> tuple[np.ndarray, int]:
    """One episode per candidate LTE, all in parallel simulations of `task` only.
    Returns (returns, env steps taken)."""
    n = len(ltes)
    if n not in env_cache:
        env_cache[n] = envs.make(policy.env_name, tasks=[task] * n)
    result = rollout(policy, env_cache[n], ltes, episodes=1, deterministic=deterministic, seed=seed)
    return result["return"], int(result["length"].sum())


class Tally:
    """Counts episodes and env steps of a search and keeps its best-return curve."""

    def __init__(self, policy, task, seed):
        self.policy, self.task, self.seed = policy, task, seed
        self.episodes = self.env_steps = self.rounds = 0
        self.best_return, self.curve, self.env_cache = -math.inf, [], {}

    def evaluate(self, ltes, deterministic=True) -> np.ndarray:
        ltes = np.asarray(ltes, dtype=np.float64)
        assert np.allclose(np.linalg.norm(ltes, axis=1), 1.0, atol=1e-9), "candidate left the unit sphere"
        returns, steps = evaluate_ltes(self.policy, self.task, ltes, deterministic,
                                       self.seed * 1000 + self.rounds, self.env_cache)
        self.rounds += 1
        self.episodes += len(ltes)
        self.env_steps += steps
        self.best_return = max(self.best_return, float(np.max(returns)))
        self.curve.append({"episodes": self.episodes, "env_steps": self.env_steps, "best_return": self.best_return})
        return returns


def search_cem(tally: Tally, rng, rounds: int, dim: int = 3) -> np.ndarray:
    """The release's elitist search on the unit sphere in R^dim; returns the top elite."""
    elites = unit(rng.standard_normal((CEM_ELITES, dim)))
    for _ in range(rounds):
        candidates = np.tile(elites, (CEM_TILES, 1))
        candidates[CEM_ELITES:] += CEM_SIGMA * rng.standard_normal(candidates[CEM_ELITES:].shape)
        tiny = np.linalg.norm(candidates, axis=1) < 1e-9  # a draw that cancels an elite: redraw
        candidates[tiny] = rng.standard_normal((int(tiny.sum()), dim))
        candidates = unit(candidates)
        returns = tally.evaluate(candidates, deterministic=False)
        elites = candidates[np.argsort(-returns, kind="stable")[:CEM_ELITES]]
    return elites[0]


def round_sizes(budget: int, first: int) -> list[int]:
    """Round 1 of size `first`, the rest of the budget in near-equal rounds of at most MAX_ROUND."""
    first = min(first, budget)
    rest = budget - first
    count = math.ceil(rest / MAX_ROUND)
    return [first] + [rest // count + (i < rest % count) for i in range(count)] if count else [first]


def search_bracket(tally: Tally, policy, prior: dict, rng, budget: int) -> np.ndarray:
    """Bracket start, line search on its great circle, local pattern search (module docstring)."""
    E = task_inputs(policy)
    line = prior["line"]
    if prior["start"] is not None:
        sizes = round_sizes(budget, max(1, math.ceil(budget / 3)))
        incumbent = prior["start"]
        direction = tangent(incumbent, line[1] - line[0])
        span = angle_between(*line)
        if direction is None or span < 1e-6:  # the two neighbours share one LTE: no line
            direction, span = tangent(incumbent, rng.standard_normal(3)), 0.4
        step = 2 * FIRST_ROUND_SPAN * span / max(sizes[0] - 1, 1)
        offsets = [0.0] + [step * math.ceil(k / 2) * (-1) ** (k + 1) for k in range(1, sizes[0])]
        candidates = np.array([move(incumbent, direction, o) for o in offsets])
    else:  # no bracket: every training LTE once (the nearest ones first if the budget is short)
        order = np.argsort([-np.dot(e, prior["guess"]) for e in E], kind="stable")
        sizes = round_sizes(budget, len(E))
        candidates = E[order[:sizes[0]]]
    returns = tally.evaluate(candidates)
    ranked = np.argsort(-returns, kind="stable")
    incumbent, incumbent_return = candidates[ranked[0]], returns[ranked[0]]
    if prior["start"] is None:
        if line is None and len(ranked) >= 2:
            line = (candidates[ranked[1]], candidates[ranked[0]])
        span = angle_between(*line) if line is not None else 0.0
        step = span / 2 if span > 1e-6 else 0.3
    for size in sizes[1:]:
        direction = tangent(incumbent, line[1] - line[0]) if line is not None else None
        along = [] if direction is None else [s * step for s in (1, -1, 2, -2)][:min(4, size // 2)]
        candidates = [move(incumbent, direction, o) for o in along]
        e1 = tangent(incumbent, rng.standard_normal(len(incumbent)))
        if len(incumbent) == 3:
            e2 = np.cross(incumbent, e1)
        else:  # the ring in a random plane of the tangent space: e2 tangent and orthogonal to e1
            e2 = tangent(incumbent, rng.standard_normal(len(incumbent)))
            e2 = unit(e2 - np.dot(e2, e1) * e1)
        phase, ring = rng.uniform(0, 2 * math.pi), size - len(candidates)
        for j in range(ring):
            psi = phase + 2 * math.pi * j / ring
            candidates.append(move(incumbent, math.cos(psi) * e1 + math.sin(psi) * e2, step))
        candidates = np.array(candidates)
        returns = tally.evaluate(candidates)
        best = int(np.argmax(returns))
        if returns[best] > incumbent_return:
            incumbent, incumbent_return = candidates[best], returns[best]
        else:
            step /= 2
    return incumbent


# --------------------------------------------------------------------------
# SAC baselines
# --------------------------------------------------------------------------


def _base_config(policy, **changes):
    """The checkpoint's training config as a train.Config (defaults for fields it
    lacks), with the machine settings (precision, threads, device) left for this
    machine to resolve: a checkpoint records what its training machine ran with."""
    here = {"precision": Config.precision, "threads": Config.threads, "device": "cpu"}
    return replace(saved_config(getattr(policy, "config", None) or {}), **here, env=policy.env_name, **changes)


def train_sac(policy, task, method, budget_steps, seed, prior, warmup_steps=SAC_WARMUP,
              eval_every=SAC_EVAL_EVERY, measure_at=(), measure=None):
    """scratch / finetune (module docstring), on train.py's Trainer for collection and
    replay. Returns (network, its LTE input, cost dict). `measure(net, lte)` (not
    charged) runs when the episode count reaches each of `measure_at`, on the network
    the method would return if stopped there (its best snapshot so far, else the
    start) and its task input; its reports join the curve."""
    cfg = _base_config(policy, baseline=method == "scratch" or policy.baseline, seed=seed, batch_per_task=SAC_BATCH,
                       replay_per_task=max(budget_steps, 1))
    torch.manual_seed(seed)
    net, critic = build_networks(policy.obs_dim, policy.act_dim, 1, asdict(cfg))
    net.env_name = policy.env_name
    if method == "finetune" and policy.baseline:
        # OHE: the whole pretrained network on a one-task input; the first layer's task
        # columns applied to the start input u become the one column, so at step 0 it
        # acts exactly as the pretrained network under u, and every weight trains.
        with torch.no_grad():
            first, source = net.net[0], policy.net[0]
            net.net.load_state_dict({k: v for k, v in policy.net.state_dict().items() if k != "0.weight"}, strict=False)
            u = torch.as_tensor(prior["guess"], dtype=source.weight.dtype)
            first.weight.copy_(torch.cat([source.weight[:, :policy.obs_dim],
                                          (source.weight[:, policy.obs_dim:] @ u)[:, None]], dim=1))
    elif method == "finetune":
        net.state_encoder.load_state_dict(policy.state_encoder.state_dict())
        net.decoder.load_state_dict(policy.decoder.state_dict())
        last = net.task_encoder[-1]  # output = bias = the starting LTE; weight and bias stay trainable
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.as_tensor(prior["guess"], dtype=torch.float32))
    trainer = Trainer(cfg, out_dir="", name="adapt", progress=False, tasks=[task], networks=(net, critic))
    if method == "finetune":
        with torch.no_grad():
            trainer.sac.log_alpha.fill_(math.log(FINETUNE_ALPHA))
    eval_env = envs.make(policy.env_name, tasks=[task] * SAC_EVAL_EPISODES)
    eval_input = lambda: (np.zeros(SAC_EVAL_EPISODES, dtype=np.int64) if net.baseline
                          else np.repeat(net.task_embeddings, SAC_EVAL_EPISODES, axis=0))
    best_return, best_state, curve = -math.inf, None, []
    pending, start_state = set(measure_at) if measure is not None else set(), copy.deepcopy(net.state_dict())
    for step in range(1, budget_steps + 1):
        trainer.collect(1)
        if step > warmup_steps:
            trainer.sac.update(trainer.replay.sample(SAC_BATCH, trainer.generator))
        if step % eval_every == 0 or step == budget_steps:
            score = float(rollout(net, eval_env, eval_input(), seed=seed * 1000 + step)["return"].mean())
            if score > best_return:
                best_return, best_state = score, copy.deepcopy(net.state_dict())
            curve.append({"episodes": trainer.episodes_finished + 1, "env_steps": step, "best_return": best_return})
        if trainer.episodes_finished in pending:
            pending.discard(trainer.episodes_finished)
            now = copy.deepcopy(net.state_dict())
            net.load_state_dict(best_state or start_state)
            curve.append({"episodes": trainer.episodes_finished, "env_steps": step, "best_return": best_return,
                          **measure(net, 0 if net.baseline else net.task_embeddings[0])})
            net.load_state_dict(now)
    episodes = trainer.episodes_finished + (0 if trainer.env.episode_step[0] == 0 else 1)
    if best_state is not None:
        net.load_state_dict(best_state)
    lte = None if net.baseline else net.task_embeddings[0]
    return net, lte, {"episodes": episodes, "env_steps": budget_steps, "curve": curve}


# --------------------------------------------------------------------------
# The measurement and the public entry point
# --------------------------------------------------------------------------


def measure(net, task, net_input, episodes: int, seed: int) -> dict:
    """The common final measurement: `episodes` deterministic episodes in parallel."""
    env = envs.make(net.env_name, tasks=[task] * episodes)
    inputs = np.repeat(np.asarray(net_input)[None], episodes, axis=0)
    result = rollout(net, env, inputs, deterministic=True, seed=seed)
    error = env.task_error(result)
    report = {"return": float(result["return"].mean()),
              "error": float(np.mean(error)) if np.isfinite(error).all() else None}
    report.update(env.summary(result))
    return report


def adapt(policy, task, method: str = "bracket", budget_episodes: int | None = None, seed: int = 0,
          cem_rounds: int | None = None, budget_steps: int | None = None, eval_episodes: int = 10,
          warmup_steps: int = SAC_WARMUP, eval_every: int = SAC_EVAL_EVERY, prior: str = "task",
          measure_at=()) -> dict:
    """Adapt a trained EAR policy (or OHE, or with method "pearl" a PEARL agent) to a
    new task; returns the report (module docstring).

    task: a velocity / direction, a (kind, value) pair, or its command-line text.
    prior: "task" lets bracket and finetune start from the task's value (the training
    tasks that bracket it); "none" gives every method the episode returns only.
    budget_episodes: search episodes (bracket 45, cem 900 = 10 rounds of 90; scratch and
    finetune get budget_episodes x 200 env steps unless budget_steps is given).
    measure_at: pearl, scratch and finetune, the episode counts after which the curve
    gets the error of what the method holds then (pearl: the posterior mean; the SAC
    baselines: their best snapshot so far), eval_episodes deterministic episodes not
    charged (pearl: CURVE_EPISODES when not given)."""
    if method not in (*METHODS, "pearl"):
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}, pearl")
    if isinstance(policy, pearl.PearlAgent) != (method == "pearl"):
        raise ValueError("a PEARL agent adapts by its own protocol (method pearl), and only a PEARL agent does")
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; valid: {', '.join(PRIORS)}")
    if not policy.env_name:
        raise ValueError("adaptation needs a policy loaded with policy.load (its env_name and tasks)")
    parse = envs.parse_task if isinstance(task, str) else envs.normalize_task
    task = parse(policy.env_name, task)
    budget = DEFAULT_BUDGET[method] if budget_episodes is None else int(budget_episodes)
    if budget < 1 or eval_episodes < 1 or (budget_steps is not None and budget_steps < 1):
        raise ValueError("budgets and the number of evaluation episodes must be at least 1")
    start_time = time.perf_counter()
    policy.eval()
    where = bracket_prior(policy, task)  # the report says whether the task extrapolates either way
    if method == "pearl":
        prior = "none"  # it infers the task from rewards: it never reads the task's value
    search_prior = where if prior == "task" else reward_only_prior(policy)
    rng = np.random.default_rng(seed)

    def at_curve_point(net, net_input):  # the measurement along a run, not charged
        found = measure(net, task, net_input, eval_episodes, FINAL_SEED + seed)
        return {"error": found["error"], "return_measured": found["return"]}

    if method == "pearl":
        found = pearl.adapt_episodes(policy, task, budget, seed, measure_at or CURVE_EPISODES,
                                     lambda z: at_curve_point(policy, z))
        net, lte = policy, found["z"]
        net_input = lte
        cost = {k: found[k] for k in ("episodes", "env_steps", "curve")}
    elif method in ("bracket", "cem"):
        tally = Tally(policy, task, seed)
        if method == "cem":
            rounds = cem_rounds if cem_rounds is not None else max(1, budget // (CEM_ELITES * CEM_TILES))
            lte = search_cem(tally, rng, rounds, dim=task_inputs(policy).shape[1])
        else:
            lte = search_bracket(tally, policy, search_prior, rng, budget)
        net, net_input = policy, lte
        cost = {"episodes": tally.episodes, "env_steps": tally.env_steps, "curve": tally.curve}
    else:
        steps = budget_steps if budget_steps is not None else budget * envs.MAX_STEPS
        net, lte, cost = train_sac(policy, task, method, int(steps), seed, search_prior, warmup_steps, eval_every,
                                   measure_at, at_curve_point)
        net_input = 0 if lte is None else lte
    report = {"env": policy.env_name, "task": list(task) if isinstance(task, tuple) else task, "method": method,
              "prior": prior, "seed": seed, "extrapolates": where["extrapolates"], **cost,
              "lte": None if lte is None else [float(v) for v in lte],
              "start_lte": None if search_prior["start"] is None else [float(v) for v in search_prior["start"]]}
    report.update(measure(net, task, net_input, eval_episodes, FINAL_SEED + seed))
    report["eval_episodes"] = eval_episodes
    report["wall_clock_s"] = round(time.perf_counter() - start_time, 3)
    return report


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def describe(report: dict) -> str:
    label = envs.task_label(tuple(report["task"]) if isinstance(report["task"], list) else report["task"])
    lte = "none (no embedding)" if report["lte"] is None else "[" + ", ".join(f"{v:+.4f}" for v in report["lte"]) + "]"
    if "heading" in report:
        achieved = f"heading {report['heading']:.1f} deg (error {report['error']:.1f} deg)"
    elif report.get("error") is not None:
        achieved = f"velocity {report['velocity']:.3f} m/s (error {report['error']:.3f} m/s)"
    else:
        achieved = f"velocity {report['velocity']:.3f} m/s, mean height {report.get('height', float('nan')):.3f}"
    prior = " (returns only: --prior none)" if report.get("prior") == "none" and report["method"] in ("bracket", "finetune") else ""
    found = "z (mean)   " if report["method"] == "pearl" else "LTE found  "
    return (f"{report['env']} task {label}, method {report['method']}{prior}:\n"
            f"  {found} {lte}\n"
            f"  achieved    {achieved}, return {report['return']:.1f} "
            f"(mean of {report['eval_episodes']} deterministic episodes)\n"
            f"  used        {report['episodes']} episodes, {report['env_steps']} env steps, "
            f"{report['wall_clock_s']:.1f} s wall-clock")


def write_json(data, path: str) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    atomic_write_text(json.dumps(data, indent=1) + "\n", path)


def save_figure(fig, path: str) -> None:
    """Write a figure as PNG (its folder made if missing) and free it."""
    import matplotlib.pyplot as plt
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_curves(reports: list[dict], path: str) -> None:
    """Best return against environment steps, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in reports:
        xs = [c["env_steps"] for c in r["curve"]]
        ys = [c["best_return"] for c in r["curve"]]
        ax.step(xs, ys, where="post", marker=".", label=f"{r['method']} ({r['episodes']} episodes)")
    ax.set_xscale("log")
    ax.set_xlabel("environment steps used")
    ax.set_ylabel("best return found")
    first = reports[0]
    ax.set_title(f"few-shot adaptation: {first['env']}, task {first['task']}")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def run_methods(policy, task, methods, args, quick=False) -> list[dict]:
    """Run methods in order; SAC baselines get the env steps the bracket search used."""
    reports, steps = [], None
    for method in methods:
        options = {"seed": args.seed, "eval_episodes": args.eval_episodes, "prior": getattr(args, "prior", "task")}
        if method == "bracket":
            options["budget_episodes"] = args.budget or (9 if quick else None)
        elif method == "pearl":
            options["budget_episodes"] = args.budget or (3 if quick else None)
        elif method == "cem":
            options["cem_rounds"] = args.rounds or (1 if quick else None)
        else:
            options["budget_steps"] = 300 if quick else steps
            options["budget_episodes"] = args.budget
            if quick:
                options.update(warmup_steps=200, eval_every=150)
        reports.append(adapt(policy, task, method, **options))
        if method == "bracket":
            steps = reports[-1]["env_steps"]
    return reports


def benchmark(policy, args) -> dict:
    rows, tasks = [], envs.FAMILIES[policy.env_name].test_tasks
    for task in (tasks[0], tasks[-1]) if args.quick else tasks:
        reports = run_methods(policy, task, METHODS, args, quick=args.quick)
        cem = next(r for r in reports if r["method"] == "cem")
        for r in reports:
            if r["method"] == "bracket" and not r["extrapolates"]:
                r["target_met"] = bool((r["error"] is not None and r["error"] <= 0.3)
                                       or r["return"] >= cem["return"] - 0.05 * abs(cem["return"]))
            rows.append(r)
    here = machine()
    print(f"machine: {here['cpu']} ({here['cpu_class']}, {here['usable_cores']} cores, torch {here['torch']}); "
          f"wall-clock seconds are this machine's")
    print(f"{'task':>8} {'method':>9} {'range':>6} {'error':>8} {'return':>9} {'episodes':>8} "
          f"{'env steps':>9} {'wall s':>7} target")
    for r in rows:
        error = "-" if r["error"] is None else f"{r['error']:.3f}"
        target = {True: "met", False: "MISSED"}.get(r.get("target_met"), "")
        print(f"{str(r['task']):>8} {r['method']:>9} {'out' if r['extrapolates'] else 'in':>6} {error:>8} "
              f"{r['return']:>9.1f} {r['episodes']:>8} {r['env_steps']:>9} {r['wall_clock_s']:>7.1f} {target}")
    checked = [r for r in rows if "target_met" in r]
    summary = {"in_range_tasks": len(checked), "targets_met": sum(r["target_met"] for r in checked)}
    if checked:
        errors = [r["error"] for r in checked if r["error"] is not None]
        summary.update(mean_error=float(np.mean(errors)) if errors else None,
                       max_episodes=max(r["episodes"] for r in checked),
                       max_wall_clock_s=max(r["wall_clock_s"] for r in checked))
        print(f"bracket on in-range tasks: target (error <= 0.3 or return within 5% of cem) met on "
              f"{summary['targets_met']}/{len(checked)}, mean error {summary['mean_error']}, "
              f"at most {summary['max_episodes']} episodes and {summary['max_wall_clock_s']:.1f} s")
    return {"env": policy.env_name, "quick": args.quick, "seed": args.seed, "machine": here, "summary": summary,
            "rows": rows}


# The release protocol's comparison (--benchmark release): who adapts, with what.
RELEASE_ENTRIES = (  # (label, checkpoint kind, method, prior)
    ("EAR bracket", "ear", "bracket", "task"),
    ("EAR bracket, rewards only", "ear", "bracket", "none"),
    ("EAR cem", "ear", "cem", "none"),
    ("OHE bracket", "ohe", "bracket", "task"),
    ("OHE bracket, rewards only", "ohe", "bracket", "none"),
    ("OHE cem", "ohe", "cem", "none"),
    ("OHE finetune", "ohe", "finetune", "task"),
    ("PEARL", "pearl", "pearl", "none"),
    ("EAR finetune", "ear", "finetune", "task"),
)
ONE_RUN_METHODS = ("pearl", "finetune", "scratch")  # run once at the largest budget, measured after each
RELEASE_SEEDS = (1, 3, 5)  # the authors' adaptation seeds


def load_any(path: str, env_name: str | None = None):
    """An EAR or OHE policy (policy.load) or a PEARL agent (pearl.load)."""
    return (pearl.load if pearl.is_checkpoint(path) else load)(path, env_name=env_name)


def file_digest(path: str) -> str:
    """A checkpoint's identity: rows measured on another file of the same name are not reused."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:16]


def release_benchmark(checkpoints: dict, seeds, budgets=CURVE_EPISODES, eval_episodes: int = 10, quick=False,
                      out: str | None = None, nets: dict | None = None) -> dict:
    """Every entry of RELEASE_ENTRIES whose checkpoint is given, on the family's release
    test tasks, for every adaptation seed. Searches run once per budget (the error a
    budget of that many episodes buys); PEARL runs once and is measured after each
    budget's episode count; cem runs its 900 episodes. One row per (entry, task, seed,
    budget); the summary gives, per entry and budget, the mean error over tasks per seed
    and its mean and 95% interval over seeds (analyze.seed_statistics).

    With `out`, the result so far is written there after every (entry, task, seed), and
    rows already there for the same checkpoint file, protocol and seeds are reused: an
    interrupted benchmark resumes, and a new checkpoint reruns only its own entries.
    `nets`: the checkpoints already loaded, by the same keys (default: loaded here)."""
    nets = nets or {kind: load_any(path) for kind, path in checkpoints.items()}
    digests = {kind: file_digest(path) for kind, path in checkpoints.items()}
    family = envs.FAMILIES[next(iter(nets.values())).env_name]
    tasks = family.release_test_tasks()[:1] if quick else family.release_test_tasks()
    protocol = {"env": family.name, "tasks": list(tasks), "budgets": list(budgets), "eval_episodes": eval_episodes,
                "quick": quick}
    any_net = next(iter(nets.values()))
    outside = [task for task in tasks if bracket_prior(any_net, task)["extrapolates"]]  # beyond the training range
    done = {}
    if out and os.path.exists(out):
        with open(out) as handle:
            previous = json.load(handle)
        if all(previous.get(k) == v for k, v in protocol.items()):
            for row in previous["rows"]:
                done.setdefault((row["label"], row["task"], row["seed"], row["digest"]), []).append(row)
    rows = []
    for label, kind, method, prior in RELEASE_ENTRIES:
        if kind not in nets:
            continue
        for task in tasks:
            for seed in seeds:
                key = (label, task, seed, digests[kind])
                if key in done:
                    rows += done[key]
                    continue
                common = {"label": label, "checkpoint": checkpoints[kind], "digest": digests[kind], "task": task,
                          "seed": seed, "method": method, "prior": prior}
                if method in ONE_RUN_METHODS:
                    report = adapt(nets[kind], task, method, max(budgets), seed, eval_episodes=eval_episodes,
                                   prior=prior, measure_at=budgets)
                    rows += [{**common, "budget": c["episodes"], "episodes": c["episodes"], "env_steps": c["env_steps"],
                              "error": c["error"], "return": c["return_measured"], "wall_clock_s": None}
                             for c in report["curve"] if "error" in c]
                    rows[-1]["wall_clock_s"] = report["wall_clock_s"]  # the whole run, at its full budget
                else:
                    for budget in ((1 if quick else None,) if method == "cem" else budgets):
                        options = {"cem_rounds": budget} if method == "cem" else {"budget_episodes": budget}
                        report = adapt(nets[kind], task, method, seed=seed, eval_episodes=eval_episodes, prior=prior,
                                       **options)
                        rows.append({**common, **{k: report[k] for k in ("episodes", "env_steps", "error", "return",
                                                                         "wall_clock_s")},
                                     "budget": report["episodes"]})
                if out:
                    write_json({**protocol, "seeds": list(seeds), "rows": rows, "complete": False}, out)
    return {**protocol, "seeds": list(seeds), "outside_training_range": outside, "machine": machine(),
            "checkpoints": checkpoints, "summary": release_summary(rows, seeds, outside), "rows": rows,
            "complete": True}


def release_summary(rows: list[dict], seeds, outside=()) -> list[dict]:
    """Per entry and budget: the mean error over tasks for each seed, then its mean and
    95% interval over seeds ("error": every task; "error_in_range": the tasks inside
    the training range only, when some lie outside); and the mean wall-clock of one
    adaptation."""
    from analyze import seed_statistics  # rliable's bootstrap (requirements-sweep.txt)
    summary = []
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label and r["error"] is not None]  # jump, stand: no error
        for budget in sorted({r["budget"] for r in mine}):
            at = [r for r in mine if r["budget"] == budget]
            over_seeds = lambda some: seed_statistics(
                [float(np.mean([r["error"] for r in some if r["seed"] == s])) for s in seeds], iqm=False)
            walls = [r["wall_clock_s"] for r in at if r["wall_clock_s"] is not None]
            entry = {"label": label, "budget": budget, "error": over_seeds(at),
                     "wall_clock_s": float(np.mean(walls)) if walls else None}
            inside = [r for r in at if r["task"] not in outside]
            if outside and inside:
                entry["error_in_range"] = over_seeds(inside)
            summary.append(entry)
    return summary


def print_release_summary(result: dict) -> None:
    error_unit = envs.FAMILIES[result["env"]].error_unit
    here = result["machine"]
    outside = result.get("outside_training_range", [])
    print(f"{result['env']}: tasks {', '.join(f'{t:g}' for t in result['tasks'])}"
          f"{' (outside the training range: ' + ', '.join(f'{t:g}' for t in outside) + ')' if outside else ''}; "
          f"adaptation seeds {', '.join(map(str, result['seeds']))}; machine {here['cpu']} ({here['cpu_class']})")
    interval = lambda e: f"{e['mean']:.3f} [{e['mean_low']:.3f}, {e['mean_high']:.3f}]"
    print(f"{'method':>26} {'episodes':>8} {'mean error (' + error_unit + '), 95% interval':>30} "
          f"{'in the training range':>24} {'per seed':>20} {'wall s':>7}")
    for row in result["summary"]:
        wall = "-" if row["wall_clock_s"] is None else f"{row['wall_clock_s']:.1f}"
        inside = interval(row["error_in_range"]) if "error_in_range" in row else "-"
        print(f"{row['label']:>26} {row['budget']:>8} {interval(row['error']):>30} {inside:>24} "
              f"{' '.join(format(v, '.3f') for v in row['error']['values']):>20} {wall:>7}")


def release_markdown(result: dict) -> str:
    """The summary as Markdown: mean error [95% interval over seeds] per method and
    budget, over every task and over the tasks inside the training range."""
    error_unit = envs.FAMILIES[result["env"]].error_unit
    budgets = sorted({row["budget"] for row in result["summary"]})
    here = result["machine"]
    lines = [f"{result['env']}, release test tasks {', '.join(f'{t:g}' for t in result['tasks'])}, adaptation seeds "
             f"{', '.join(map(str, result['seeds']))}; mean error ({error_unit}) over the tasks, then mean and 95% "
             f"bootstrap interval over seeds; {result['eval_episodes']} deterministic measurement episodes per "
             f"adaptation; {here['cpu']} ({here['cpu_class']}), torch {here['torch']}.", ""]
    outside = result.get("outside_training_range", [])
    for key, title in (("error", "every task"), ("error_in_range", "tasks inside the training range")):
        if key == "error_in_range" and not outside:
            continue
        lines += [f"**{title}**" + (f" (outside: {', '.join(f'{t:g}' for t in outside)})" if key == "error" and outside
                                    else ""), "",
                  "| method | " + " | ".join(f"{b} ep." for b in budgets) + " | wall s (largest budget) |",
                  "|---|" + "---|" * (len(budgets) + 1)]
        for label in dict.fromkeys(row["label"] for row in result["summary"]):
            mine = {row["budget"]: row for row in result["summary"] if row["label"] == label}
            cells = [f"{mine[b][key]['mean']:.3f} [{mine[b][key]['mean_low']:.3f}, {mine[b][key]['mean_high']:.3f}]"
                     if b in mine and key in mine[b] else "" for b in budgets]
            wall = mine[max(mine)]["wall_clock_s"]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {'' if wall is None else f'{wall:.1f}'} |")
        lines.append("")
    return "\n".join(lines)


def plot_release(result: dict, path: str) -> None:
    """Mean error against episodes used (log axis), one line per method with its
    interval over seeds; cem's 900 episodes as points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for label in dict.fromkeys(r["label"] for r in result["summary"]):
        mine = [r for r in result["summary"] if r["label"] == label]
        xs = [r["budget"] for r in mine]
        mean = [r["error"]["mean"] for r in mine]
        low, high = [r["error"]["mean_low"] for r in mine], [r["error"]["mean_high"] for r in mine]
        line, = ax.plot(xs, mean, marker="o", label=label, linestyle="-" if len(xs) > 1 else "none")
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15)
        if len(xs) == 1:
            ax.errorbar(xs, mean, yerr=[[m - l for m, l in zip(mean, low)], [h - m for m, h in zip(mean, high)]],
                        color=line.get_color(), capsize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("adaptation episodes used")
    ax.set_ylabel(f"mean task error ({envs.FAMILIES[result['env']].error_unit})")
    ax.set_title(f"{result['env']}: {len(result['tasks'])} release test tasks, {len(result['seeds'])} seeds "
                 f"(95% interval over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="adapt.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", help="new task: velocity in m/s (4.5), Ant direction in degrees (77), "
                                       "halfcheetah-runjump kind:value (run:3.5, jump:5)")
    parser.add_argument("--env", default=None, help=f"family ({', '.join(envs.FAMILIES)}); default: the checkpoint's")
    parser.add_argument("--checkpoint", default=None, help="trained EAR policy, unset: checkpoints/<env>.pt")
    parser.add_argument("--method", default=None, choices=[*METHODS, "pearl", "all"],
                        help="bracket (ours, <= 45 episodes; the default), cem (the release, 900), scratch or "
                             "finetune (SAC), all; pearl for a PEARL checkpoint (its default)")
    parser.add_argument("--budget", type=int, default=None,
                        help="bracket search episodes, unset: 45 (scratch/finetune: x200 env steps; cem: see --rounds)")
    parser.add_argument("--rounds", type=int, default=None, help="cem rounds of 90 episodes, unset: 10")
    parser.add_argument("--prior", default="task", choices=PRIORS,
                        help="task: bracket and finetune start from the task's value; none: returns only")
    parser.add_argument("--eval-episodes", type=int, default=10, help="deterministic episodes of the final measurement")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", default=None,
                        help="write the report as JSON (benchmark default: results/adapt_benchmark.json)")
    parser.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                        help="plot best return against env steps (default path: next to --out)")
    parser.add_argument("--benchmark", nargs="?", const="plotted", default=None, choices=("plotted", "release"),
                        help="plotted (default): every EAR method on the authors' plotted test tasks; release: "
                             "EAR, OHE and PEARL on the release protocol's drawn tasks over --seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(RELEASE_SEEDS),
                        help="--benchmark release: adaptation seeds (the authors': 1 3 5)")
    parser.add_argument("--baseline-checkpoint", default=None,
                        help="--benchmark release: the OHE checkpoint, unset: <env>-baseline.pt beside --checkpoint")
    parser.add_argument("--pearl-checkpoint", default=None,
                        help="--benchmark release: the PEARL checkpoint, unset: <env>-pearl.pt beside --checkpoint")
    parser.add_argument("--quick", action="store_true", help="tiny budgets for every method (a smoke test)")
    return parser


def main(argv=None) -> None:
    torch.set_num_threads(1)  # rollouts of at most a few dozen simulations: one thread is fastest
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("budget", "rounds", "eval_episodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for target in (args.out, args.plot):
        if target:  # fail now, not after minutes of search
            if not envs.writable_folder(os.path.dirname(target) or "."):
                parser.error(f"cannot write {target}; pass a writable path")
    if args.env is not None:
        try:
            envs.check_family(args.env)
        except ValueError as error:
            parser.error(str(error))
    path = args.checkpoint or os.path.join("checkpoints", f"{args.env or 'halfcheetah-vel'}.pt")
    try:
        policy = load_any(path, env_name=args.env)
    except CheckpointError as error:
        parser.error(str(error))
    is_pearl = isinstance(policy, pearl.PearlAgent)
    args.method = args.method or ("pearl" if is_pearl else "bracket")
    if is_pearl != (args.method == "pearl"):
        parser.error(f"{path} is a PEARL checkpoint: it adapts with --method pearl only" if is_pearl else
                     f"--method pearl needs a PEARL checkpoint (train.py --pearl), not {path}")
    if is_pearl and args.benchmark:
        parser.error(f"{path} is a PEARL checkpoint; --benchmark takes the EAR one as --checkpoint "
                     f"(and PEARL's as --pearl-checkpoint)")

    if args.benchmark == "release":
        run_release_benchmark(parser, args, policy, path)
        return
    if args.benchmark:
        _note_machine(policy, path)
        result = benchmark(policy, args)
        result["checkpoint"] = path
        out = args.out or os.path.join("results", "adapt_benchmark.json")
        _write_outputs(parser, result, result["rows"], out, args.plot)
        return
    if args.task is None:
        parser.error("--task is required (e.g. --task 4.5), or run --benchmark")
    try:
        task = envs.parse_task(policy.env_name, args.task)
    except ValueError as error:
        parser.error(str(error))
    prior = bracket_prior(policy, task)
    if prior["extrapolates"]:
        print(f"adapt.py: warning: {prior['reason']}; the result extrapolates beyond the training tasks",
              file=sys.stderr)
    methods = METHODS if args.method == "all" else (args.method,)
    if {"scratch", "finetune"} & set(methods):
        _note_machine(policy, path)
    reports = run_methods(policy, task, methods, args, quick=args.quick)
    for report in reports:
        report["checkpoint"] = path
        print(describe(report))
    data = reports[0] if len(reports) == 1 else {"env": policy.env_name, "task": reports[0]["task"], "results": reports}
    _write_outputs(parser, data, reports, args.out, args.plot)


def run_release_benchmark(parser, args, policy, path: str) -> None:
    """--benchmark release: EAR (`policy`, from `path`) with the OHE and PEARL checkpoints
    beside it (or given), then the table, the figure and the JSON."""
    if policy.baseline:
        parser.error(f"{path} is the one-hot baseline; --benchmark release takes the EAR checkpoint as "
                     f"--checkpoint (and OHE's as --baseline-checkpoint)")
    checkpoints = {"ear": path}
    stem = os.path.splitext(path)[0]
    for kind, given, suffix in (("ohe", args.baseline_checkpoint, "-baseline.pt"),
                                ("pearl", args.pearl_checkpoint, "-pearl.pt")):
        if given or os.path.exists(stem + suffix):
            checkpoints[kind] = given or stem + suffix
        else:
            print(f"adapt.py: no {stem + suffix}; the comparison runs without {kind.upper()} "
                  f"(pass --{'baseline' if kind == 'ohe' else 'pearl'}-checkpoint)", file=sys.stderr)
    flags = {"ear": "--checkpoint", "ohe": "--baseline-checkpoint", "pearl": "--pearl-checkpoint"}
    nets = {}
    try:
        for kind, other in checkpoints.items():
            found = nets[kind] = policy if kind == "ear" else load_any(other, env_name=policy.env_name)
            if (kind == "pearl") != isinstance(found, pearl.PearlAgent) or (kind == "ohe") != bool(found.baseline):
                parser.error(f"{other} is not the {kind.upper()} checkpoint {flags[kind]} takes; pass another")
    except CheckpointError as error:
        parser.error(str(error))
    out = args.out or os.path.join("results", f"adapt_release_{policy.env_name}.json")
    try:
        budgets = QUICK_EPISODES if args.quick else CURVE_EPISODES
        result = release_benchmark(checkpoints, args.seeds, budgets, eval_episodes=args.eval_episodes,
                                   quick=args.quick, out=out, nets=nets)
        print_release_summary(result)
        write_json(result, out)
        png = args.plot or os.path.splitext(out)[0] + ".png"
        plot_release(result, png)
        table = os.path.splitext(out)[0] + ".md"
        atomic_write_text(release_markdown(result), table)
    except OSError as error:
        parser.error(f"cannot write {error.filename} ({error.strerror}); pass a writable --out or --plot path")
    print(f"wrote {out}\nwrote {png}\nwrote {table}")


def _note_machine(policy, path) -> None:
    """One line where the SAC baselines run with other machine settings than the
    checkpoint's training did (they are resolved for this machine, never inherited)."""
    trained_with = {k: policy.config.get(k) for k in ("precision", "device")}
    here = {"precision": resolve_precision("auto", "cpu"), "device": "cpu"}
    if trained_with != here:
        print(f"adapt.py: {path} was trained with precision {trained_with['precision']} on {trained_with['device']}; "
              f"here the SAC baselines run with {here['precision']} on the cpu ({cpu_class()} kernels, "
              f"{resolve_threads(0)} threads)", file=sys.stderr)


def _write_outputs(parser, data, reports, out, plot) -> None:
    try:
        if out:
            write_json(data, out)
            print(f"wrote {out}")
        if plot is not None:
            label = str(reports[0]["task"]).replace(" ", "")
            png = plot or (os.path.splitext(out)[0] + ".png" if out else f"adapt-{reports[0]['env']}-{label}.png")
            if len({str(r["task"]) for r in reports}) > 1:  # benchmark: one plot per task
                for task in dict.fromkeys(str(r["task"]) for r in reports):
                    name = f"{os.path.splitext(png)[0]}-{task.replace(' ', '')}.png"
                    plot_curves([r for r in reports if str(r["task"]) == task], name)
                    print(f"wrote {name}")
            else:
                plot_curves(reports, png)
                print(f"wrote {png}")
    except OSError as error:
        parser.error(f"cannot write {error.filename} ({error.strerror}); pass a writable --out or --plot path")


if __name__ == "__main__":
    main()
