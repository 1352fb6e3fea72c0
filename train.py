"""Train the EAR multi-task policy with SAC (paper Sec. 3 and 5.1).

    python train.py                                   # HalfCheetah-Vel, fast CPU preset
    python train.py --env ant-dir                     # any family of envs.FAMILIES
    python train.py --preset paper --device cuda      # the authors' sizes and schedule
    python train.py --resume                          # continue an interrupted run
    python train.py --baseline                        # plain multi-task SAC (policy on obs + one-hot)
    python train.py --pearl                           # the PEARL meta-RL baseline (pearl.py), for adapt.py
    python train.py --benchmark                       # updates/s and env steps/s, one JSON line
    python train.py --set minutes=20                  # stop after 20 minutes of wall-clock
    python train.py --sweep seed=0,1,2 lte_noise=0,0.02   # a grid of runs on Ray Tune, in runs/sweep/

The loop (paper Sec. 5.1 and the authors' release): one simulation per training task, all stepped together with
one batched policy call; warm-up epochs with the untrained stochastic policy;
then every epoch collects `steps_per_epoch` steps in every task, runs
`updates_per_epoch` SAC updates on task-balanced batches (sac.py), and every
`eval_every` epochs evaluates `eval_episodes` deterministic episodes per task.

Files, for run name NAME (default: the family, plus "-baseline" or "-pearl") in --out DIR:
    DIR/NAME.pt         best policy by mean evaluation return (what policy.load reads)
    DIR/NAME.csv        one row per evaluation: env steps, updates, wall-clock, mean and
                        per-task return and error, alpha, losses
    DIR/NAME.json       the config, the commands (every one that trained the run, resumes
                        included) and the final evaluation
    DIR/NAME.latest.pt  everything needed to resume (networks, optimisers, replay,
                        random states, log); written every `checkpoint_every` epochs,
                        on Ctrl-C and at the end
All files are written atomically (temporary file, then rename). Checkpoints hold
only tensors and plain Python values and load with torch.load(weights_only=True).

Sweeps (requirements-sweep.txt): every point of the --sweep grid is an ordinary
run of this file in OUT/NAME/FIELD=V,.../ on one thread, scheduled by Ray Tune
onto this machine's cores (or a cluster's, with --address); a run whose process
dies is restarted from its .latest.pt, and the same command again skips the
finished runs and resumes the others. `python analyze.py seeds` aggregates them.

Presets (Config below; every field can be overridden with --set field=value):
    fast   (default) 2x256 networks, 32 transitions per task per batch, half of them
           dealt by each task's latest evaluation error, Adam lr 2e-3, the actor and
           temperature stepped on every second update (a delayed actor, as TD3's), one
           critic where episodes never end early (two where the body can fall), every
           usable core, 1500 epochs, evaluation every 10 epochs:
           HalfCheetah-Vel to about 0.4 m/s mean velocity error in 20 minutes of a
           2-core AMD EPYC with AVX2 only, 0.29 with AVX512-BF16 (three seeds each;
           README, "Levers").
    paper  exactly the authors' numbers: 400-wide networks (encoder 2, decoder 4, critics 4
           layers), 128 transitions per task (Ant 80), replay 1e6/T (Ant 50k per
           task), 200 steps + 200 updates + 3 evaluation episodes per epoch,
           20 warm-up epochs, 4000/5000/10000 epochs by family.
    Both multiply in bf16 (autocast) where a bf16 product measures natively fast
    on the machine that runs (AMX, AVX512-BF16) and in fp32 elsewhere
    (precision=auto; --set precision=fp32 forces fp32). The README's fp32-against-bf16 runs show no loss in learning.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode  # benchmark only: sees the backward pass's products too

import envs
from envs import ArgumentParser, fail
from policy import CheckpointError, atomic_save, atomic_write_text, build_networks, csv_text, read_checkpoint, rollout
from sac import SAC, ReferenceSAC, Replay, machine, task_batch, resolve_precision, resolve_threads, usable_cores


@dataclass
class Config:
    env: str = "halfcheetah-vel"
    task_set: str = "default"
    preset: str = "fast"
    seed: int = 0
    baseline: bool = False  # plain multi-task SAC instead of EAR
    pearl: bool = False  # the PEARL meta-RL baseline (pearl.py) instead of EAR
    # networks (Sec. 3.1; the release's sizes)
    encoder_hidden: list = field(default_factory=lambda: [256, 256])
    task_hidden: list = field(default_factory=lambda: [256])
    decoder_hidden: list = field(default_factory=lambda: [256, 256])
    critic_hidden: list = field(default_factory=lambda: [256, 256])
    baseline_hidden: list = field(default_factory=lambda: [256, 256, 256])
    lse_dim: int = 16
    lte_dim: int = 3
    lte_noise: float = 0.02  # Sec. 3.2: really applied in the actor loss; 0 = the release's effective behaviour
    # SAC (Sec. 3.3)
    gamma: float = 0.99
    tau: float = 0.005
    lr: float = 2e-3  # the paper uses 3e-4: far slower here (README, "Choosing the fast preset")
    lr_end_fraction: float = 1.0  # cosine-anneal lr to lr x this by the last epoch (1 = constant, the paper's)
    grad_clip: float = 10.0
    alpha_per_task: bool = False  # one learned temperature per task (multi-task SAC) instead of the paper's shared one
    actor_every: int = 2  # actor and temperature step once every that many critic steps (the paper's: 1; README, "Levers")
    critics: int = 2  # Q networks; targets and the actor take their minimum (the paper's clipped double Q: 2; fast: 1 where episodes never end early)
    reward_scale: float = 1.0
    batch_per_task: int = 32
    task_focus: float = 0.0  # share of the batch dealt by each task's evaluation error (sac.task_batch); 0 = balanced, the paper's; fast: 0.5
    replay_per_task: int = 100_000
    precision: str = "auto"  # bf16 autocast where the CPU multiplies bf16 natively, else fp32 (sac.resolve_precision)
    # loop (Sec. 5.1)
    epochs: int = 1500
    minutes: float = 0.0  # wall-clock budget: training also ends at the first epoch past it (0 = epochs only)
    warmup_epochs: int = 5
    steps_per_epoch: int = 200
    updates_per_epoch: int = 200
    eval_every: int = 10
    eval_episodes: int = 2
    checkpoint_every: int = 50
    threads: int = 0  # torch CPU threads; 0 = every usable core (never slower in the README's measurements); 1 for two runs side by side
    device: str = "cpu"


# Fields added after the first checkpoints were written: a saved config without one
# trained with the value here (the paper's behaviour), whatever today's default is.
ADDED_FIELDS = {"pearl": False, "alpha_per_task": False, "actor_every": 1, "minutes": 0.0, "lr_end_fraction": 1.0,
                "critics": 2, "task_focus": 0.0}


# Options removed after their pilots showed no gain (README, "Levers"): a run made with one on cannot be rebuilt.
REMOVED_FIELDS = {"critic_layer_norm": False, "obs_norm": False, "crossq": False}


def saved_config(saved: dict) -> Config:
    """A checkpoint's config dict as a Config: unknown keys dropped, fields it predates
    set to what it ran with (ADDED_FIELDS), the others to their defaults."""
    for key, off in REMOVED_FIELDS.items():
        if saved.get(key, off) != off:
            raise CheckpointError(f"this run was made with {key}={saved[key]!r}, an option this code no longer has; "
                                  "use the commit that made it")
    known = {f.name for f in fields(Config)}
    return Config(**{**ADDED_FIELDS, **{k: v for k, v in saved.items() if k in known}})


def preset(name: str, env: str) -> Config:
    """The named preset for a family."""
    family = envs.check_family(env)
    if name == "fast":
        # One critic where episodes never end early: clipped double Q guards against the
        # overestimation that termination makes costly, as SimbaV2 turns it on only there.
        # A share of each batch dealt by task error speeds the slowest tasks, and a step size
        # cosine-annealed to a tenth by the last epoch holds what the run has learnt where a
        # constant one swings and can diverge late (README, "Levers").
        return Config(env=env, critics=2 if family.terminates else 1, task_focus=0.5, lr_end_fraction=0.1)
    if name == "paper":
        return Config(env=env, preset="paper", lr=3e-4, actor_every=1, encoder_hidden=[400, 400], task_hidden=[400],
                      decoder_hidden=[400] * 4, critic_hidden=[400] * 4, baseline_hidden=[400] * 4,
                      batch_per_task=family.paper_batch_per_task,
                      replay_per_task=family.paper_replay_per_task or int(1e6) // len(envs.training_tasks(env)),
                      epochs=family.paper_epochs, warmup_epochs=20,
                      eval_every=1, eval_episodes=3, checkpoint_every=10)
    raise ValueError(f"unknown preset {name!r}; valid presets: fast, paper")


PRESETS = ("fast", "paper")


# --------------------------------------------------------------------------
# Checkpoint contents
# --------------------------------------------------------------------------


def plain_tasks(tasks: list) -> list:
    """Tasks as plain lists/floats for checkpoints (weights_only-safe)."""
    return [list(t) if isinstance(t, tuple) else float(t) for t in tasks]


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def evaluate(policy, env, episodes: int, seed: int, inputs=None) -> dict:
    """Deterministic evaluation over the training tasks: mean return and each
    family's error (velocity error in m/s, Ant heading error in degrees).
    `inputs`: what conditions the policy per task (default: its own LTEs / task ids)."""
    policy.eval()
    result = rollout(policy, env, inputs, episodes=episodes, deterministic=True, seed=seed)
    policy.train()
    error = env.task_error(result)
    metrics = {"mean_return": float(np.mean(result["return"])),
               "mean_error": float(np.nanmean(error)) if np.isfinite(error).any() else float("nan"),
               "fell": float(np.mean(result["fell"]))}
    measures = env.task_measures(result)
    for i, task in enumerate(env.tasks):
        label = envs.task_label(task)
        metrics[f"return[{label}]"] = float(result["return"][i])
        metrics[f"error[{label}]"] = float(error[i])
        metrics.update({f"{name}[{label}]": float(values[i]) for name, values in measures.items()
                        if np.isfinite(values[i])})
    if "speed_along" in measures:
        metrics["mean_speed_along"] = float(np.mean(measures["speed_along"]))
    return metrics


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


class Trainer:
    """Environments, SAC, replay and bookkeeping of one training run.

    `tasks` (default: the config's task set) and `networks` (a (policy, critic)
    pair; default: fresh ones from the config) let adapt.py reuse this loop for
    its single-task SAC baselines. pearl.PearlTrainer changes networks, update rule,
    collection and evaluation inputs through `build_networks`, `learner` and the methods."""

    learner = SAC  # the update rule (sac.py)

    def __init__(self, cfg: Config, out_dir: str, name: str, progress: bool = True,
                 tasks=None, networks=None):
        # resolved for this machine and saved as what ran; never taken from a checkpoint
        cfg = replace(cfg, precision=resolve_precision(cfg.precision, cfg.device), threads=resolve_threads(cfg.threads))
        self.cfg, self.out_dir, self.name, self.show_progress = cfg, out_dir, name, progress
        self.paths = {k: os.path.join(out_dir, f"{name}{ext}") for k, ext in
                      (("best", ".pt"), ("log", ".csv"), ("summary", ".json"), ("latest", ".latest.pt"))}
        torch.manual_seed(cfg.seed)
        torch.set_flush_denormal(True)  # denormal floats take slow CPU paths and carry no information here
        torch.set_num_threads(cfg.threads)
        tasks = cfg.task_set if tasks is None else tasks
        self.env = envs.make(cfg.env, tasks=tasks, seed=cfg.seed)
        self.eval_env = envs.make(cfg.env, tasks=tasks, seed=cfg.seed + 10_000)
        T, obs_dim, act_dim = self.env.num_tasks, self.env.obs_dim, self.env.act_dim
        self.cfg_dict = asdict(cfg)
        policy, critic = networks or self.build_networks(obs_dim, act_dim, T, self.cfg_dict)
        self.sac = self.learner(policy, critic, act_dim, self.cfg_dict, device=cfg.device)
        self.replay = Replay(T, cfg.replay_per_task, obs_dim, act_dim, device=cfg.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.task_counts = cfg.batch_per_task  # per task in every batch; task_focus deals it by error
        self.epoch, self.env_steps, self.updates, self.wall_clock = 0, 0, 0, 0.0
        self.episodes_finished = 0
        self.best_return, self.log_rows = -math.inf, []
        self.commands: list[str] = []  # every command that trained this run, oldest first (train.py's main adds them)
        self.on_evaluation = None  # called with every evaluation row (run() sets it)
        self.interrupted = False  # set by train(): ended by Ctrl-C or SIGTERM
        self.obs, _ = self.env.reset(seed=cfg.seed)

    build_networks = staticmethod(build_networks)  # policy.py's EAR / one-hot networks

    def evaluation_inputs(self):
        """What conditions the policy on each training task in an evaluation (None: its own)."""
        return None

    # ---- checkpoints ----------------------------------------------------

    def _header(self) -> dict:
        return {"format": "ear-checkpoint-v1", "env_name": self.cfg.env, "tasks": plain_tasks(self.env.tasks),
                "obs_dim": self.env.obs_dim, "act_dim": self.env.act_dim, "config": self.cfg_dict}

    def _progress(self) -> dict:
        return {"epoch": self.epoch, "env_steps": self.env_steps, "updates": self.updates,
                "wall_clock": self.wall_clock, "best_return": self.best_return, "commands": self.commands}

    def save_latest(self) -> None:
        state = self._header()
        state.update(sac=self.sac.state_dict(), replay=self.replay.state_dict(), progress=self._progress(),
                     log=self.log_rows, obs=torch.as_tensor(self.obs),
                     episode_step=torch.as_tensor(self.env.episode_step),
                     env_state={"qpos": torch.as_tensor(self.env.qpos.copy()),
                                "qvel": torch.as_tensor(self.env.qvel.copy()),
                                "rng": self.env.rng.bit_generator.state},
                     torch_rng=torch.get_rng_state(), generator=self.generator.get_state(), **self.extra_state())
        atomic_save(state, self.paths["latest"])

    def extra_state(self) -> dict:
        """What a subclass adds to the resumable checkpoint (pearl.py: its context buffer)."""
        return {}

    def load_extra_state(self, data: dict) -> None:
        """Restores `extra_state()` from a resumable checkpoint."""

    def save_best(self, metrics: dict) -> None:
        state = self._header()
        state.update(policy=self.sac.policy.state_dict(), metrics=metrics, progress=self._progress())
        atomic_save(state, self.paths["best"])

    def resume(self) -> None:
        path = self.paths["latest"]
        data = read_checkpoint(path)
        saved = asdict(saved_config(data["config"]))  # fields it predates: what it ran with
        for key in ("env", "task_set", "baseline", "pearl", "encoder_hidden", "decoder_hidden", "critic_hidden",
                    "task_hidden", "baseline_hidden", "lse_dim", "lte_dim", "critics", "alpha_per_task"):
            if saved.get(key) != self.cfg_dict.get(key):
                raise CheckpointError(f"{path} was made with {key}={saved.get(key)!r}, not {self.cfg_dict.get(key)!r}; "
                                      f"resume with the same --env/--preset/--set options or use another --name")
        self.resumed_machine = {key: saved.get(key) for key in ("precision", "threads", "device")}
        self.sac.load_state_dict(data["sac"])
        self.replay.load_state_dict(data["replay"])
        progress = data["progress"]
        self.epoch, self.env_steps = int(progress["epoch"]), int(progress["env_steps"])
        self.updates, self.wall_clock = int(progress["updates"]), float(progress["wall_clock"])
        self.best_return = float(progress["best_return"])
        self.commands = list(progress.get("commands", [])) + self.commands
        self.log_rows = list(data["log"])
        if self.log_rows:
            self.focus_batch(self.log_rows[-1])
        self.obs = data["obs"].numpy()
        self.env.episode_step[:] = data["episode_step"].numpy()
        self.env.qpos[:] = data["env_state"]["qpos"].numpy()
        self.env.qvel[:] = data["env_state"]["qvel"].numpy()
        self.env.batch.forward()
        self.env.rng.bit_generator.state = data["env_state"]["rng"]
        torch.set_rng_state(data["torch_rng"])
        self.generator.set_state(data["generator"])
        self.load_extra_state(data)

    # ---- the loop -------------------------------------------------------

    def collect(self, steps: int) -> None:
        """Step every task `steps` times with the stochastic policy; store transitions."""
        policy = self.sac.policy
        task_ids = torch.arange(self.env.num_tasks, device=self.cfg.device)
        for _ in range(steps):
            with torch.no_grad():
                obs_t = torch.as_tensor(self.obs, device=self.cfg.device)
                action = policy(obs_t, task_ids)[0].cpu().numpy()
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            self.replay.add(self.obs, action, reward, info["final_obs"], terminated)
            self.obs = next_obs
            self.env_steps += self.env.num_tasks
            self.episodes_finished += int(np.sum(terminated | truncated))

    def finished(self) -> bool:
        """All epochs done, or the wall-clock budget (`minutes`) spent."""
        return self.epoch >= self.cfg.epochs or 0 < self.cfg.minutes * 60 <= self.wall_clock

    def anneal_learning_rate(self) -> None:
        """This epoch's step size: cosine annealing (Loshchilov and Hutter, 2017) from lr at
        the first epoch to lr x lr_end_fraction at the last (`epochs`; a run extended
        by --resume --epochs follows the new length); 1 keeps lr, as the paper does."""
        end = self.cfg.lr_end_fraction
        if end == 1:
            return
        progress = min(self.epoch / max(self.cfg.epochs - 1, 1), 1.0)
        lr = self.cfg.lr * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress)))
        for optimizer in (self.sac.optimizer, self.sac.alpha_optimizer):
            for group in optimizer.param_groups:
                group["lr"] = lr

    def update(self) -> list[dict]:
        """`updates_per_epoch` SAC updates (sac.py) on batches of `task_counts`; their losses."""
        losses = [self.sac.update(self.replay.sample(self.task_counts, self.generator))
                  for _ in range(self.cfg.updates_per_epoch)]
        self.updates += self.cfg.updates_per_epoch
        return losses

    def focus_batch(self, row: dict) -> None:
        """With task_focus > 0, deal the next batches by this evaluation's task errors."""
        if self.cfg.task_focus > 0:
            errors = [row.get(f"error[{envs.task_label(task)}]", math.nan) for task in self.env.tasks]
            self.task_counts = task_batch(errors, self.cfg.batch_per_task, self.cfg.task_focus)

    def train(self) -> dict:
        """Epochs of collect, update, evaluate (every `eval_every`) and checkpoint (every
        `checkpoint_every`) until `finished()`; Ctrl-C or SIGTERM end it with a checkpoint."""
        cfg = self.cfg
        start = time.perf_counter() - self.wall_clock
        if self.epoch == 0 and self.replay.size == 0:
            self.collect(cfg.warmup_epochs * cfg.steps_per_epoch)
        bar = _progress(cfg.epochs, self.epoch, self.show_progress)
        self.interrupted = False
        try:
            with _signals_interrupt():
                while not self.finished():
                    self.collect(cfg.steps_per_epoch)
                    self.anneal_learning_rate()
                    losses = self.update()
                    self.epoch += 1
                    self.wall_clock = time.perf_counter() - start
                    last = self.finished()
                    if self.epoch % cfg.eval_every == 0 or last:
                        self.evaluate_and_log(losses, bar)
                    if self.epoch % cfg.checkpoint_every == 0 or last:
                        self.save_latest()
                    bar.update(1)
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            bar.close()
        if self.interrupted:
            self.wall_clock = time.perf_counter() - start
            self.save_latest()
            print(f"interrupted at epoch {self.epoch}: saved {self.paths['latest']}; continue with --resume",
                  file=sys.stderr)
        return self.log_rows[-1] if self.log_rows else {}

    def evaluate_and_log(self, losses: list[dict], bar) -> None:
        """Evaluate (train.evaluate), log a CSV row, keep the best policy, report progress."""
        mean_losses = {k: float(torch.stack([l[k] for l in losses]).mean()) for k in losses[0]}
        if not all(math.isfinite(v) for v in mean_losses.values()):
            fail(f"a loss became {mean_losses} at epoch {self.epoch}; the last good checkpoint "
                 f"{self.paths['latest']} is kept. Lower --set lr=... or use --set precision=fp32, then --resume")
        metrics = evaluate(self.sac.policy, self.eval_env, self.cfg.eval_episodes, seed=self.cfg.seed + 10_000,
                           inputs=self.evaluation_inputs())
        row = {"epoch": self.epoch, "env_steps": self.env_steps, "updates": self.updates,
               "wall_clock_s": round(self.wall_clock, 2), **{k: round(v, 4) for k, v in metrics.items()},
               **{k: round(v, 5) for k, v in mean_losses.items()}}
        self.log_rows.append(row)
        self.focus_batch(row)
        if metrics["mean_return"] > self.best_return:
            self.best_return = metrics["mean_return"]
            self.save_best(metrics)
        atomic_write_text(csv_text(self.log_rows), self.paths["log"])
        if self.on_evaluation is not None:
            self.on_evaluation(row)
        if not self.show_progress:
            print(f"epoch {self.epoch}  env steps {self.env_steps}  updates {self.updates}  "
                  f"{self.wall_clock:.0f} s  mean return {metrics['mean_return']:.1f}  "
                  f"mean error {metrics['mean_error']:.3f}  alpha {mean_losses['alpha']:.4f}", flush=True)
        bar.set_postfix(ret=f"{metrics['mean_return']:.0f}", err=f"{metrics['mean_error']:.2f}",
                        alpha=f"{mean_losses['alpha']:.3f}")


@contextlib.contextmanager
def _signals_interrupt():
    """Inside, SIGINT and SIGTERM raise KeyboardInterrupt, so Ctrl-C and kill both end a
    run with a final checkpoint; installed explicitly because a background job may
    inherit SIGINT as ignored, and only in a main thread (a Ray Tune trial runs in another)."""
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, _raise_keyboard_interrupt) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="epoch", dynamic_ncols=True,
                file=sys.stdout, mininterval=2.0)


# --------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------


def benchmark(seconds: float = 10.0) -> dict:
    """Speed on HalfCheetah-Vel, measured on this machine (`machine`: CPU model and
    class). Per preset, in its own precision with its threads, then in fp32 (where
    that differs) and on one thread:
      updates_per_s         our SAC update
      plain_updates_per_s   sac.ReferenceSAC, the textbook update (fp32, same weights, batch
                            and threads, same run); both with the paper's actor_every=1
                            and two critics
      preset_updates_per_s  our update with the preset's own actor_every and critics (fast: 2 and 1)
      matmul_share          the time of the update's matrix products alone (replayed
                            at the same shapes and precision) over the update's time:
                            1.0 would be the roof of this CPU for this update
      collect_env_steps_per_s   data collection (policy + env)
      epoch_share           (own precision and threads) the share of an epoch spent
                            stepping, updating and evaluating"""
    results = {"benchmark": "train", "machine": machine(), "configs": []}
    runs = []
    for preset_name in PRESETS:
        cfg = preset(preset_name, "halfcheetah-vel")
        own_precision, own_threads = resolve_precision(cfg.precision, "cpu"), resolve_threads(cfg.threads)
        runs.append((preset_name, own_precision, own_threads, True))
        if own_precision != "fp32":
            runs.append((preset_name, "fp32", own_threads, False))
        if preset_name == "fast" and own_threads != 1:
            runs.append((preset_name, own_precision, 1, False))
    for preset_name, precision, threads, own in runs:
        # a small replay: where a batch is drawn from does not change the update's speed; the
        # paper's actor_every=1 and two critics, so that ours and the textbook update do the same work
        own_cfg = preset(preset_name, "halfcheetah-vel")
        cfg = replace(own_cfg, warmup_epochs=0, precision=precision, threads=threads, replay_per_task=5000,
                      actor_every=1, critics=2)
        trainer = Trainer(cfg, out_dir="/tmp", name="benchmark", progress=False)
        trainer.collect(200)
        collect_start = time.perf_counter()
        trainer.collect(400)
        collect_rate = 400 * trainer.env.num_tasks / (time.perf_counter() - collect_start)
        sample = lambda: trainer.replay.sample(cfg.batch_per_task, trainer.generator)
        ours = _updates_per_second(trainer.sac.update, sample, seconds)
        roof = _matmul_roof_seconds(trainer.sac.update, sample())
        plain_rate = _updates_per_second(ReferenceSAC(trainer.sac).update, sample, seconds)
        preset_rate = ours
        if (own_cfg.actor_every, own_cfg.critics) != (1, 2):  # the preset's own update, as train.py runs it
            own_dict = {**trainer.cfg_dict, "actor_every": own_cfg.actor_every, "critics": own_cfg.critics}
            env = trainer.env
            own_sac = SAC(*build_networks(env.obs_dim, env.act_dim, env.num_tasks, own_dict), env.act_dim, own_dict)
            preset_rate = _updates_per_second(own_sac.update, sample, seconds)
        row = {"preset": preset_name, "encoder_hidden": cfg.encoder_hidden, "task_hidden": cfg.task_hidden,
               "decoder_hidden": cfg.decoder_hidden, "critic_hidden": cfg.critic_hidden,
               "batch": cfg.batch_per_task * trainer.env.num_tasks, "obs_dim": trainer.env.obs_dim,
               "act_dim": trainer.env.act_dim, "tasks": trainer.env.num_tasks, "precision": cfg.precision,
               "preset_precision": own, "threads": torch.get_num_threads(),
               "updates_per_s": round(ours, 1), "plain_updates_per_s": round(plain_rate, 1),
               "preset_updates_per_s": round(preset_rate, 1), "actor_every": own_cfg.actor_every,
               "critics": own_cfg.critics,
               "speedup": round(ours / plain_rate, 2), "matmul_share": round(roof * ours, 2),
               "collect_env_steps_per_s": round(collect_rate)}
        if own:
            evaluate_start = time.perf_counter()
            evaluate(trainer.sac.policy, trainer.eval_env, cfg.eval_episodes, seed=0)
            seconds_per_epoch = {"stepping": cfg.steps_per_epoch * trainer.env.num_tasks / collect_rate,
                                 "updating": cfg.updates_per_epoch / preset_rate,
                                 "evaluating": (time.perf_counter() - evaluate_start) / cfg.eval_every}
            total = sum(seconds_per_epoch.values())
            row["epoch_seconds"] = round(total, 2)
            row["epoch_share"] = {k: round(v / total, 3) for k, v in seconds_per_epoch.items()}
        results["configs"].append(row)
    return results


def _updates_per_second(update, sample, seconds: float) -> float:
    for _ in range(5):
        update(sample())
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = update(sample())
        count += 1
    float(out["critic_loss"])  # wait for the last update
    return count / (time.perf_counter() - start)


class _RecordMatmuls(TorchDispatchMode):
    """Records the shape and dtype of every matrix product dispatched inside it,
    the backward pass's included (below autocast, so with the dtypes that ran)."""

    PRODUCTS = (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm)

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in self.PRODUCTS:
            self.calls.append((func, [(a.shape, a.dtype) for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def _matmul_roof_seconds(update, batch: dict, repeats: int = 20) -> float:
    """Seconds of one update's matrix products alone: recorded during one update,
    then replayed on fresh contiguous tensors of the same shapes and dtypes
    (the best of `repeats` replays)."""
    recorder = _RecordMatmuls()
    with recorder:
        update(batch)
    calls = [(func, [torch.randn(shape).to(dtype) for shape, dtype in inputs]) for func, inputs in recorder.calls]
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for func, inputs in calls:
            func(*inputs)
        best = min(best, time.perf_counter() - start)
    return best


# --------------------------------------------------------------------------
# Sweeps: a grid of runs as Ray Tune trials (seeds x families x settings)
# --------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
SWEEP_EXCLUDES = [".git", ".venv", "checkpoints", "results", "runs", "__pycache__", ".pytest_cache"]  # not shipped to Ray workers


def split_values(text: str) -> list[str]:
    """'0,1,2' -> ['0', '1', '2']; a comma inside [...] belongs to a list value ('[64,64],[256,256]')."""
    values, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        depth += (char == "[") - (char == "]")
        current += char
    return values + [current]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """--sweep field=v1,v2 ... -> {field: [v1, v2]}; the grid is their cartesian product."""
    known = [f.name for f in fields(Config)]
    grid = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--sweep expects field=v1,v2,... with field one of {', '.join(known)}; got {item!r}")
        values = split_values(text)
        if any(not value.strip() for value in values):
            raise ValueError(f"--sweep {key}={text!r} has an empty value; write {key}=v1,v2,...")
        if key in grid:
            raise ValueError(f"--sweep names {key} twice; give all its values in one {key}=v1,v2,...")
        grid[key] = values
    return grid


def command_config(args, family: str, preset_name: str, **machine) -> Config:
    """The Config that train.py's options ask for: the preset, the run's kind (EAR, the
    one-hot baseline, PEARL with its reward scale), --epochs, then every --set."""
    cfg = replace(preset(preset_name, family), task_set=args.tasks, seed=args.seed, baseline=args.baseline,
                  pearl=args.pearl, device=args.device, **machine)
    if args.pearl:
        from pearl import REWARD_SCALE  # pearl.py imports this file
        cfg = replace(cfg, reward_scale=REWARD_SCALE)
    if parse_overrides(cfg, args.overrides).pearl:  # --pearl or --set pearl=true: PEARL draws task-balanced batches
        cfg = replace(cfg, task_focus=0.0)
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    return parse_overrides(cfg, args.overrides)


def sweep_trials(grid: dict[str, list[str]], args) -> list[dict]:
    """Every point of the grid as a trial: its folder name, run name, Config and the
    standalone `python train.py` command that would train exactly that run."""
    trials = []
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo))
        family, preset_name = point.pop("env", args.env), point.pop("preset", args.preset)
        envs.check_family(family)
        cfg = command_config(args, family, preset_name, threads=1)  # one core per trial: as many trials at once as cores
        try:
            cfg = parse_overrides(cfg, [f"{k}={v}" for k, v in point.items()])
        except ValueError as error:
            raise ValueError(str(error).replace("--set", "--sweep", 1)) from None
        validate(cfg)
        folder = ",".join(f"{k}={v}" for k, v in zip(grid, combo))
        name = run_name(cfg)
        reference = asdict(preset(preset_name, family))
        settings = [f"--set {k}={json.dumps(v, separators=(',', ':'))}" for k, v in asdict(cfg).items()
                    if k not in ("env", "preset", "task_set", "seed", "baseline", "pearl", "device", "epochs")
                    and v != reference[k]]
        trials.append({"trial": folder, "name": name, "config": asdict(cfg), "command": " ".join(
            ["python train.py", f"--env {cfg.env} --preset {preset_name} --tasks {cfg.task_set} --seed {cfg.seed}",
             f"--epochs {cfg.epochs} --device {cfg.device}"] + (["--baseline"] if cfg.baseline else []) + (["--pearl"] if cfg.pearl else [])
            + settings)})
    return trials


def run_name(cfg: Config) -> str:
    """The default run name: the family, plus -baseline or -pearl."""
    return cfg.env + ("-baseline" if cfg.baseline else "-pearl" if cfg.pearl else "")


def finished_summary(folder: str, name: str, epochs: int):
    """The run's .json if it trained to its end (`epochs`, or its `minutes`) and was not interrupted, else None."""
    path = os.path.join(folder, f"{name}.json")
    try:
        with open(path) as handle:
            summary = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
    finished = summary.get("finished", summary.get("epochs", 0) >= epochs and not summary.get("interrupted", True))
    return summary if finished else None


TUNE_METRICS = ("epoch", "env_steps", "updates", "wall_clock_s", "mean_return", "mean_error")


def sweep_trial(config: dict, trials: dict) -> None:
    """One Ray Tune trial: an ordinary run in its own folder, resumed from its
    .latest.pt when one is there (a restarted trial, a re-run sweep); a finished run
    only reports its last evaluation. `config["trial"]` names the grid point."""
    from ray import tune
    trial = trials[config["trial"]]
    cfg, folder, name = Config(**trial["config"]), trial["folder"], trial["name"]
    os.makedirs(folder, exist_ok=True)
    done = finished_summary(folder, name, cfg.epochs)
    if done is not None:
        print(f"{folder}: already trained to epoch {done['epochs']}; nothing to do", flush=True)
        tune.report({k: done["last_evaluation"].get(k, done.get(k)) for k in TUNE_METRICS})
        return
    atomic_write_text(f"{os.getpid()}\n", os.path.join(folder, "worker.pid"))  # which process runs this trial
    resume = os.path.exists(os.path.join(folder, f"{name}.latest.pt"))
    command = f"{trial['command']} --out {folder} --name {name}" + (" --resume" if resume else "")
    run(cfg, folder, name, resume=resume, command=command, progress=False,
        on_evaluation=lambda row: tune.report({k: row[k] for k in TUNE_METRICS}))


def check_address(address: str | None) -> None:
    """Fail in one line, before Ray tries for a minute, when HOST:PORT does not answer."""
    if address in (None, "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: expected auto, HOST:PORT (the head's GCS, default port 6379) "
                         f"or ray://HOST:PORT (Ray Client, default port 10001)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise ValueError(f"--address {address}: nothing answers there ({error.strerror or error}); start the cluster "
                         f"with `ray start --head` on that machine, or drop --address to run on this one") from None


def sweep(trials: list[dict], root: str, address: str | None) -> int:
    """Run `trials` as Ray Tune trials (each its own process, resources = its threads)
    and return how many did not finish. A trial whose process dies is restarted by
    Tune (FailureConfig) and resumes from its last checkpoint; a re-run of the same
    sweep skips finished runs and resumes the others."""
    for trial in trials:
        trial["folder"] = os.path.join(root, trial["trial"])
    if all(finished_summary(t["folder"], t["name"], t["config"]["epochs"]) for t in trials):
        print(f"{root}: all {len(trials)} runs are trained; nothing to do", flush=True)
        return 0
    try:
        import ray
        from ray import tune
    except ImportError:
        fail("--sweep needs Ray Tune: pip install -r requirements-sweep.txt")
    os.makedirs(root, exist_ok=True)
    try:
        ray.init(address=address, num_cpus=None if address else usable_cores(), include_dashboard=False,
                 log_to_driver=False, runtime_env={"working_dir": HERE, "excludes": SWEEP_EXCLUDES})
    except (ConnectionError, RuntimeError) as error:
        fail(f"--address {address}: {str(error).splitlines()[0]}; is a cluster running there (`ray start --head`)? "
             f"A cluster of Ray >= 2.59 also wants its token: export RAY_AUTH_MODE=token, and on another machine "
             f"RAY_AUTH_TOKEN from `ray get-auth-token` on the head")
    shutil.rmtree(os.path.join(root, "tune"), ignore_errors=True)  # Tune's own bookkeeping; our files are the record
    by_folder = {trial["trial"]: trial for trial in trials}
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, trials=by_folder),
                                    lambda config: {"cpu": by_folder[config["trial"]]["config"]["threads"]})
    tuner = tune.Tuner(  # one column, "trial", in Tune's table: the grid point's folder name
        trainable, param_space={"trial": tune.grid_search(list(by_folder))},
        tune_config=tune.TuneConfig(trial_dirname_creator=lambda t: t.config["trial"],
                                    trial_name_creator=lambda t: t.config["trial"]),
        run_config=tune.RunConfig(name="tune", storage_path=root, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=3)))
    tuner.fit()
    ray.shutdown()
    unfinished = 0
    for trial in trials:
        done = finished_summary(trial["folder"], trial["name"], trial["config"]["epochs"])
        unfinished += done is None
        print(f"{trial['folder']}: " + (f"mean error {done['last_evaluation'].get('mean_error', float('nan')):.3f}, "
                                        f"{done['wall_clock_s']:.0f} s" if done else "unfinished"), flush=True)
    return unfinished


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_overrides(cfg: Config, items: list[str]) -> Config:
    """--set field=value (JSON values: 3e-4, [256,256], true)."""
    known = {f.name: f for f in fields(Config)}
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--set expects field=value with field one of {', '.join(known)}; got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        default = getattr(cfg, key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"--set {key} expects true or false, got {text!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"--set {key} expects a number, got {text!r}")
            value = type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
        if isinstance(default, list) and not (isinstance(value, list) and all(isinstance(v, int) and v > 0 for v in value)):
            raise ValueError(f"--set {key} expects a list of positive widths like [256,256], got {text!r}")
        changes[key] = value
    return replace(cfg, **changes)


def validate(cfg: Config) -> None:
    envs.check_family(cfg.env)
    envs.training_tasks(cfg.env, cfg.task_set)
    positive = ("actor_every", "critics", "epochs", "steps_per_epoch", "updates_per_epoch", "eval_every", "eval_episodes",
                "checkpoint_every", "batch_per_task", "replay_per_task", "lse_dim", "lte_dim")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    for key in ("warmup_epochs", "threads", "minutes"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key} must not be negative, got {getattr(cfg, key)}")
    if cfg.warmup_epochs * cfg.steps_per_epoch + cfg.steps_per_epoch < 1:
        raise ValueError("no data would be collected")
    for key in ("lr", "tau", "grad_clip", "reward_scale"):
        if not getattr(cfg, key) > 0:
            raise ValueError(f"{key} must be positive, got {getattr(cfg, key)}")
    if not 0 <= cfg.task_focus < 1:
        raise ValueError(f"task_focus must lie in [0, 1), got {cfg.task_focus}")
    if cfg.pearl and cfg.task_focus:
        raise ValueError("PEARL samples its own task-balanced batches; drop --set task_focus")
    if not 0 <= cfg.lr_end_fraction <= 1:
        raise ValueError(f"lr_end_fraction must lie in [0, 1], got {cfg.lr_end_fraction}")
    if not 0 <= cfg.gamma < 1:
        raise ValueError(f"gamma must lie in [0, 1), got {cfg.gamma}")
    if not cfg.lte_noise >= 0:
        raise ValueError(f"lte_noise must not be negative, got {cfg.lte_noise}")
    if cfg.baseline and cfg.pearl:
        raise ValueError("--baseline and --pearl are two different baselines; pass one of them")
    if cfg.pearl and cfg.alpha_per_task:
        raise ValueError("PEARL has no task id for a temperature per task; drop --set alpha_per_task=true")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    if cfg.device != "cpu" and cfg.device != "mps" and not cfg.device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda[:N] or mps, got {cfg.device!r}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is available; use --device cpu")
    if cfg.device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps asked for, but no Apple GPU (MPS) is available; use --device cpu")


def main(argv=None) -> None:
    parser = ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="halfcheetah-vel", help=f"task family: {', '.join(envs.FAMILIES)}")
    parser.add_argument("--tasks", default="default", help="named task set of the family (halfcheetah-runjump: default, four-motion)")
    parser.add_argument("--preset", default="fast", help="fast (laptop CPU) or paper (the authors' exact scale)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--epochs", type=int, default=None, help="number of epochs (default: the preset's; fast 1500, paper 4000-10000 by family)%(default).0s")
    parser.add_argument("--baseline", action="store_true", help="plain multi-task SAC (policy on obs + one-hot task)")
    parser.add_argument("--pearl", action="store_true", help="the PEARL meta-RL baseline (pearl.py), for adapt.py")
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:N] or mps")
    parser.add_argument("--out", default=None, help="folder for the checkpoint, log and summary (default: checkpoints; "
                        "runs for a sweep)%(default).0s")
    parser.add_argument("--name", default=None, help="run name (default: the family, plus -baseline); a sweep's folder "
                        "name in OUT (default: sweep)%(default).0s")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/NAME.latest.pt to the same total epochs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any Config field, e.g. --set lr=1e-3 --set lte_dim=8")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per evaluation instead)")
    parser.add_argument("--sweep", nargs="+", default=None, metavar="FIELD=V1,V2",
                        help="a grid of runs on Ray Tune, e.g. --sweep seed=0,1,2 env=halfcheetah-vel,ant-dir "
                        "lte_noise=0,0.02; other flags apply to every trial; runs in OUT/NAME/TRIAL/")
    parser.add_argument("--address", default=None, help="Ray cluster for --sweep: auto, HOST:PORT or ray://HOST:PORT "
                        "(default: start Ray on this machine)%(default).0s")
    parser.add_argument("--benchmark", action="store_true", help="print updates/s and env steps/s as one JSON line and exit")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each benchmark measurement")
    args = parser.parse_args(argv)

    if args.benchmark:
        if not args.seconds > 0:
            parser.error("--seconds must be positive")
        print(json.dumps(benchmark(args.seconds)))
        return
    if args.sweep is not None:
        if args.resume:
            parser.error("--resume is implied by --sweep: re-run the same --sweep command to continue it")
        root = os.path.join(args.out or "runs", args.name or "sweep")
        if os.sep in (args.name or "") or not envs.writable_folder(os.path.dirname(os.path.abspath(root))):
            parser.error(f"cannot write the sweep folder {root}; pass a writable --out and a plain --name")
        try:
            trials = sweep_trials(parse_grid(args.sweep), args)
            check_address(args.address)
        except ValueError as error:
            parser.error(str(error))
        unfinished = sweep(trials, os.path.abspath(root), args.address)
        if unfinished:
            print(f"{unfinished} of {len(trials)} runs did not finish; re-run the same command to continue them",
                  file=sys.stderr)
            raise SystemExit(1)
        return
    if args.address is not None:
        parser.error("--address is for --sweep only")
    args.out = args.out or "checkpoints"
    try:
        envs.check_family(args.env)
        cfg = command_config(args, args.env, args.preset)
        validate(cfg)
    except ValueError as error:
        parser.error(str(error))
    name = args.name or run_name(cfg)
    if os.sep in name or not name:
        parser.error(f"--name {name!r} must be a plain file name")
    if not envs.writable_folder(args.out):
        parser.error(f"cannot write to --out {args.out}; pass a writable folder")

    command = " ".join(["python", "train.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        summary = run(cfg, args.out, name, resume=args.resume, command=command, progress=not args.no_progress)
    except CheckpointError as error:
        parser.error(str(error))
    if summary["interrupted"]:
        raise SystemExit(130)


def run(cfg: Config, out_dir: str, name: str, *, resume: bool, command: str, progress: bool,
        on_evaluation=None) -> dict:
    """One training run, fresh or resumed from OUT/NAME.latest.pt, ending in OUT/NAME.json.
    `on_evaluation(row)` sees every evaluation row (a sweep reports them to Ray Tune)."""
    if cfg.pearl:
        from pearl import PearlTrainer as trainer_class
    else:
        trainer_class = Trainer
    trainer = trainer_class(cfg, out_dir, name, progress=progress)
    trainer.on_evaluation = on_evaluation
    cfg = trainer.cfg
    trainer.commands.append(command)
    if resume:
        trainer.resume()
        print(f"resumed {trainer.paths['latest']} at epoch {trainer.epoch}/{cfg.epochs}", flush=True)
        if trainer.resumed_machine != {k: getattr(cfg, k) for k in trainer.resumed_machine}:
            print(f"note: the run so far ran with {trainer.resumed_machine}; it continues with "
                  f"precision={cfg.precision}, threads={cfg.threads}, device={cfg.device}", flush=True)
    elif os.path.exists(trainer.paths["latest"]):
        print(f"note: starting afresh; {trainer.paths['latest']} will be overwritten (use --resume to continue it)",
              flush=True)
    print("config " + json.dumps(asdict(cfg)), flush=True)
    final = trainer.train()
    summary = {"command": command, "commands": trainer.commands, "config": asdict(cfg), "epochs": trainer.epoch,
               "env_steps": trainer.env_steps, "updates": trainer.updates, "wall_clock_s": round(trainer.wall_clock, 1),
               "best_mean_return": trainer.best_return, "interrupted": trainer.interrupted,
               "finished": trainer.finished() and not trainer.interrupted,
               "last_evaluation": final}
    atomic_write_text(json.dumps(summary, indent=1) + "\n", trainer.paths["summary"])
    if not trainer.interrupted:
        print(f"done: {trainer.epoch} epochs, {trainer.updates} updates, {trainer.env_steps} env steps, "
              f"{trainer.wall_clock:.0f} s; final mean return {final.get('mean_return', float('nan')):.1f}, "
              f"mean error {final.get('mean_error', float('nan')):.3f}; best policy in {trainer.paths['best']}",
              flush=True)
    return summary


if __name__ == "__main__":
    main()
