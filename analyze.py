"""The pictures and numbers behind the paper's claims (EAR, Hua, Chen, Xu, ICLR 2023).

    python analyze.py all                       # every figure and table in results/ (< 15 min, 2 cores)
    python analyze.py seeds --runs runs/sweep         # a sweep's seeds, with 95% intervals
    python analyze.py seeds --runs runs/ablation --evaluate   # an ablation: each run measured afresh
    python analyze.py interpolate --pair 3 4    # one subcommand; --help on each lists the flags
    python analyze.py sphere --env ant-dir --directions 200 --checkpoints DIR --out DIR

Every subcommand reads checkpoints/<env>.pt (and the training logs <env>.csv,
<env>-baseline.csv), writes a PNG and a CSV into results/, prints its key numbers
one per line and merges them into results/summary.json under its own name.
Every policy is run through policy.rollout; parallel simulations of one
envs.make(env, tasks=[task] * N) stand in for repeated episodes (each starts from
its own reset noise); the task there only sets the reward, the behaviour we
measure is the velocity (Ant: heading) and the torso height.

Subcommands (`python analyze.py NAME --help` defines each one's measures; `all` runs the
first seven):
    evaluate     the results table: a fresh deterministic evaluation of every checkpoint.
    interpolate  zero-shot interpolation (paper Sec. 5.2): nlerp and slerp between training LTEs.
    compose      composition (paper Sec. 5.2): run + jump (+ stand) LTE mixes against the pure tasks.
    sphere       the self-organised LTE space (paper Sec. 5.2): the behaviour over the whole sphere.
    equivariance the LSE's equivariance: orbits over the gait and one rotation per step.
    curves       training curves, EAR against the plain multi-task SAC baseline.
    render       filmstrip and GIF of a training LTE and an interpolated one.
    seeds        a sweep's runs grouped by configuration, with 95% intervals over seeds; with
                 --evaluate each run's policy measured afresh (an ablation, e.g. of the LTE noise).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import adapt  # noqa: E402
import envs  # noqa: E402
import policy as policy_lib  # noqa: E402
import train  # noqa: E402
from envs import ArgumentParser  # noqa: E402
from policy import nlerp, slerp, unit  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PROG = "analyze.py"
SUBCOMMANDS = ("evaluate", "interpolate", "compose", "sphere", "equivariance", "curves", "render")
_POLICY_CACHE: dict = {}
STILL_DEG = 0.01  # an LSE turning less than this per step stands still: no orbit to score


def say(line: str) -> None:
    from tqdm import tqdm
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


# --------------------------------------------------------------------------
# Geometry on the sphere, and the equivariance measure
# --------------------------------------------------------------------------


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly evenly spread unit vectors (n, 3): equal-area z bands, golden-angle longitudes."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z ** 2)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _procrustes_residual(x: np.ndarray, y: np.ndarray) -> float:
    u, _, vt = np.linalg.svd(y.T @ x)
    rotation = u @ vt  # the orthogonal R minimising sum ||R x_t - y_t||^2
    still = np.sum((y - x) ** 2)
    return float(np.sum((x @ rotation.T - y) ** 2) / still) if still > 1e-12 else float("nan")


def equivariance_score(trajectory, shuffles: int = 20, seed: int = 0) -> dict:
    """Orthogonal-Procrustes residual of one LSE trajectory (steps, d), in time order and
    with shuffled time order (see the module docstring), and the mean angle the LSE
    turns per step ("step_deg": near 0, the LSE stands still and the residual says
    little). Rows with NaN (after an episode's end) are dropped; fewer than 2d + 2
    rows leave too few steps to pin down a rotation of R^d, and give NaN; so does a
    still LSE (step_deg < STILL_DEG), whose tiny steps any map fits."""
    s = np.asarray(trajectory, dtype=np.float64)
    s = s[np.isfinite(s).all(axis=1)]
    score = {"residual": float("nan"), "shuffled": float("nan"), "shuffled_std": float("nan"),
             "step_deg": float("nan"), "steps": len(s)}
    if len(s) < 2 * s.shape[1] + 2:
        return score
    rng = np.random.default_rng(seed)
    shuffled = []
    for _ in range(shuffles):
        p = s[rng.permutation(len(s))]
        shuffled.append(_procrustes_residual(p[:-1], p[1:]))
    shuffled = np.array([v for v in shuffled if math.isfinite(v)] or [float("nan")])
    cosines = np.clip(np.sum(unit(s[:-1]) * unit(s[1:]), axis=1), -1, 1)
    step_deg = float(np.degrees(np.arccos(cosines)).mean())
    score.update(shuffled=float(shuffled.mean()), shuffled_std=float(shuffled.std()), step_deg=step_deg)
    if step_deg >= STILL_DEG:
        score["residual"] = _procrustes_residual(s[:-1], s[1:])
    return score


def r_squared(y, prediction) -> float:
    y, prediction = np.asarray(y, float), np.asarray(prediction, float)
    total = np.sum((y - y.mean()) ** 2)
    # Undefined when the achieved behaviour does not vary (e.g. a policy that stands still).
    return float(1.0 - np.sum((y - prediction) ** 2) / total) if total > 1e-6 * len(y) else float("nan")


# --------------------------------------------------------------------------
# Checkpoints, rollouts, files
# --------------------------------------------------------------------------


def _fail(message: str) -> None:
    envs.fail(message, PROG)


def _load(path: str, family: str):
    if path not in _POLICY_CACHE:
        try:
            _POLICY_CACHE[path] = policy_lib.load(path, family)
        except policy_lib.CheckpointError as error:
            _fail(str(error))
    return _POLICY_CACHE[path]


def checkpoints(args, command: str, default_families) -> list:
    """(family, policy) for the families asked for (--env) or, by default, those of
    `default_families` whose checkpoint exists; a missing asked-for one is an error."""
    families = args.env or list(default_families)
    found, missing = [], []
    for family in families:
        path = os.path.join(args.checkpoints, f"{family}.pt")
        if not os.path.isfile(path):
            if args.env:
                _fail(f"{command}: no checkpoint {path}; train one with `python train.py --env {family}` "
                      f"or pass --checkpoints DIR")
            missing.append(family)
            continue
        policy = _load(path, family)
        if policy.baseline:
            _fail(f"{path} is a plain multi-task SAC baseline without task embeddings; pass an EAR checkpoint")
        found.append((family, policy))
    if missing:
        say(f"{command}: skipping {', '.join(missing)} (no checkpoint in {args.checkpoints})")
    return found


def task_index(policy, family: str, text: str) -> int:
    """Index of the training task written as on the command line ('3', '90', 'run:3')."""
    task = envs.parse_task(family, text)
    for i, known in enumerate(policy.tasks):
        if (known == task if isinstance(task, tuple) else abs(float(known) - task) < 1e-6):
            return i
    raise ValueError(f"task {text} is not a training task of this checkpoint "
                     f"({', '.join(envs.task_label(t) for t in policy.tasks)})")


def target_of(family: str, task):
    """The task's target behaviour: velocity in m/s, Ant direction in degrees, None for jump/stand."""
    if isinstance(task, tuple):
        return task[1] if task[0] == "run" else None
    return float(task)


def simulate(policy, family: str, ltes, args, deterministic=True, record=False):
    """One episode of every embedding in `ltes`, in parallel simulations of one env."""
    env = envs.make(family, tasks=[policy.tasks[0]] * len(ltes), seed=args.seed)
    env.max_steps = args.steps
    result = policy_lib.rollout(policy, env, np.asarray(ltes, dtype=np.float32), episodes=1,
                                deterministic=deterministic, record=record, seed=args.seed)
    return result, env


def write_csv(path: str, rows: list[dict]) -> None:
    """The rows as CSV, written atomically."""
    policy_lib.atomic_write_text(policy_lib.csv_text(rows), path)


def _clean(value):
    """JSON-safe: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 5) if math.isfinite(value) else None
    return value


def merge_summary(out: str, command: str, numbers: dict) -> None:
    path = os.path.join(out, "summary.json")
    summary = {}
    if os.path.isfile(path):
        try:
            with open(path) as handle:
                summary = json.load(handle)
        except (OSError, ValueError):
            summary = {}
    summary.setdefault(command, {})
    if isinstance(summary[command], dict):
        summary[command].update(_clean(numbers))
    else:
        summary[command] = _clean(numbers)
    policy_lib.atomic_write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", path)


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------
# interpolate
# --------------------------------------------------------------------------


def interpolation_pairs(policy, family: str, texts, problems: list) -> list:
    """Training-task index pairs (alpha = 0, alpha = 1) from their command-line texts;
    a pair that is not two run tasks of the checkpoint is skipped and noted in `problems`."""
    pairs = []
    for a_text, b_text in texts:
        try:
            ia, ib = task_index(policy, family, a_text), task_index(policy, family, b_text)
            if target_of(family, policy.tasks[ia]) is None or target_of(family, policy.tasks[ib]) is None:
                raise ValueError("both tasks must have a velocity target (run tasks)")
        except ValueError as error:
            problems.append(f"{family} {a_text}->{b_text}: {error}")
            say(f"interpolate {family}: skipping pair {a_text}->{b_text} ({error})")
            continue
        pairs.append((ia, ib))
    return pairs


def interpolation(policy, family: str, pairs: list, args) -> dict:
    """The numbers of interpolate for one checkpoint (no files): per pair "a->b" and per
    "method_actions", the behaviour at every alpha (mean and std over --episodes), the
    linear prediction, R^2 against targets and endpoints, monotonicity."""
    if not pairs:  # e.g. the four-motion tasks have neither default pair
        return {}
    record = envs.FAMILIES[family]
    E, alphas, episodes = policy.task_embeddings, np.linspace(0.0, 1.0, args.alphas), args.episodes
    methods = {"nlerp": nlerp, "slerp": slerp}
    ltes = np.array([fn(E[ia], E[ib], a) for ia, ib in pairs for fn in methods.values() for a in alphas])
    tiled = np.repeat(ltes, episodes, axis=0)  # parallel simulations as repeated episodes
    values = {}
    for mode in ("deterministic", "stochastic"):
        result, env = simulate(policy, family, tiled, args, deterministic=mode == "deterministic")
        values[mode] = env.behaviour(result).reshape(len(pairs), len(methods), len(alphas), episodes)
    numbers = {}
    for p, (ia, ib) in enumerate(pairs):
        ta, tb = policy.tasks[ia], policy.tasks[ib]
        va, vb = target_of(family, ta), target_of(family, tb)
        span = float(record.difference(vb, va))
        predicted = va + alphas * span  # (1 - alpha) v_a + alpha v_b
        pair = {"alpha0_task": envs.task_label(ta), "alpha1_task": envs.task_label(tb), "alphas": alphas.tolist(),
                "linear_prediction": predicted.tolist()}
        for m, method in enumerate(methods):
            for mode in ("deterministic", "stochastic"):
                v = predicted[:, None] + record.difference(values[mode][p, m], predicted[:, None])  # headings unwrapped
                mean, std = v.mean(axis=1), v.std(axis=1)
                ends = mean[0] + alphas * (mean[-1] - mean[0])
                steps = np.diff(mean) * np.sign(span if span else 1.0)
                pair[f"{method}_{mode}"] = {
                    "alpha_0.5": float(np.interp(0.5, alphas, mean)), "values": mean.tolist(), "std": std.tolist(),
                    "r2_targets": r_squared(mean, predicted), "r2_endpoints": r_squared(mean, ends),
                    "monotonic": bool(np.all(steps > -record.behaviour_tolerance)),
                    "fraction_steps_forward": float(np.mean(steps > 0))}
        numbers[f"{envs.task_label(ta)}->{envs.task_label(tb)}"] = pair
    return numbers


def draw_interpolation(family: str, numbers: dict, episodes: int, path: str) -> None:
    record = envs.FAMILIES[family]
    fig, axes = plt.subplots(1, len(numbers), figsize=(5.2 * len(numbers), 4.2), squeeze=False)
    for ax, (name, pair) in zip(axes[0], numbers.items()):
        alphas, predicted = np.array(pair["alphas"]), np.array(pair["linear_prediction"])
        ax.plot(alphas, predicted, "k--", lw=1, label="linear prediction (1-α)·v_a + α·v_b")
        for method in ("nlerp", "slerp"):
            color = "C0" if method == "nlerp" else "C1"
            for mode, style in (("deterministic", "-"), ("stochastic", ":")):
                mean, std = np.array(pair[f"{method}_{mode}"]["values"]), np.array(pair[f"{method}_{mode}"]["std"])
                ax.plot(alphas, mean, style, color=color, marker="o" if style == "-" else None, ms=3,
                        label=f"{method}, {mode} actions")
                ax.fill_between(alphas, mean - std, mean + std, color=color, alpha=0.12)
        ax.plot([0, 1], [predicted[0], predicted[-1]], "k*", ms=14, label="training tasks (α=0: a, α=1: b)")
        ax.set(title=f"{record.title}: {pair['alpha0_task']} (α=0) → {pair['alpha1_task']} (α=1)",
               xlabel="interpolation weight α", ylabel=record.behaviour_label)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Zero-shot LTE interpolation, mean ± std over {episodes} episodes", fontsize=10)
    _save(fig, path)


def interpolate(args) -> dict:
    """Zero-shot interpolation (paper Sec. 5.2): nlerp and slerp between pairs of training LTEs.

    For pairs of training tasks (a, b) the LTE e(alpha) runs from e_a (alpha = 0)
    to e_b (alpha = 1) in --alphas steps, by nlerp: normalize((1 - alpha) e_a + alpha e_b)
    and by slerp (constant angular speed along the great circle). Each e(alpha) is
    rolled out --episodes times with deterministic (tanh of the mean) and with
    stochastic actions. Reported: the behaviour at alpha = 0.5; R^2 of the achieved
    behaviour against the linear prediction (1 - alpha) v_a + alpha v_b, with v the
    target velocities (Ant: the target headings, unwrapped; "r2_targets") and with v
    the behaviour achieved at the two ends ("r2_endpoints"); monotonic: no step in
    alpha moves against the direction a -> b by more than 0.05 m/s (Ant 2 degrees).
    R^2 = 1 - sum (y - prediction)^2 / sum (y - mean y)^2 over the alphas (y: the
    mean over episodes); null when y does not vary (a policy that stands still).
    Velocity: mean over steps 50-200 of the episode; Ant heading: direction of the
    torso's displacement over the episode (the release's measure: heading of the final position).
    """
    numbers, problems = {}, []
    for family, policy in checkpoints(args, "interpolate", ["halfcheetah-vel", "ant-dir"]):
        pairs = interpolation_pairs(policy, family, args.pair or envs.FAMILIES[family].pairs, problems)
        if not pairs:
            continue
        family_numbers, rows = interpolation(policy, family, pairs, args), []
        error_unit = envs.FAMILIES[family].error_unit
        for name, pair in family_numbers.items():
            predicted = pair["linear_prediction"]
            for method in ("nlerp", "slerp"):
                for mode in ("deterministic", "stochastic"):
                    stats = pair[f"{method}_{mode}"]
                    say(f"interpolate {family} {name} {method} {mode}: alpha 0.5 gives "
                        f"{stats['alpha_0.5']:.2f} {error_unit} (line {np.interp(0.5, pair['alphas'], predicted):.2f}), R^2 "
                        f"{stats['r2_targets']:.2f} vs targets, {stats['r2_endpoints']:.2f} vs endpoints, "
                        f"{'monotonic' if stats['monotonic'] else 'not monotonic'}")
                    rows += [{"env": family, "pair": name, "method": method, "actions": mode, "alpha": round(a, 4),
                              "mean": round(float(mu), 4), "std": round(float(sd), 4),
                              "linear_prediction": round(float(pr), 4), "episodes": args.episodes}
                             for a, mu, sd, pr in zip(pair["alphas"], stats["values"], stats["std"], predicted)]
        draw_interpolation(family, family_numbers, args.episodes, os.path.join(args.out, f"interpolate_{family}.png"))
        write_csv(os.path.join(args.out, f"interpolate_{family}.csv"), rows)
        for pair in family_numbers.values():  # the summary keeps what it always held
            pair.pop("alphas"), pair.pop("linear_prediction")
        numbers[family] = family_numbers
    if args.pair and not numbers and problems:
        _fail(f"interpolate --pair {problems[0]}")
    return numbers


# --------------------------------------------------------------------------
# compose
# --------------------------------------------------------------------------


def compose(args) -> dict:
    """Composition (paper Sec. 5.2): run + jump (+ stand) LTE mixes against the pure tasks.

    On halfcheetah-runjump.pt, and on every other halfcheetah-runjump-NAME.pt beside
    it (compose_NAME.png/csv, summary key NAME; e.g. the four-motion tasks):
    normalize((1 - mix) e_run + mix e_jump), and e_stand likewise when the checkpoint
    has a stand task, against the pure tasks. Over steps 50-200, like the velocity:
    forward velocity, mean and peak root height z (the root slide: 0 at the start
    pose with the torso 0.7 m above the floor, about -0.12 m for a cheetah standing
    at rest) and the airborne fraction, the fraction of steps with z above
    --airborne-height (0.2 m: a level torso is then 0.9 m up, out of reach of the
    ~0.6 m legs; a rearing cheetah can pass it with a hind foot down, so read it
    as "high" rather than strictly airborne).
    Then every mixing weight of --alphas in [0, 1], by nlerp and by slerp, for run +
    jump and run + stand (compose_sweep[_NAME].png/csv, summary key mixing_sweep):
    the same measures and the torso pitch (nose-up angle -qpos[2], degrees), which
    weights compose (at least half the run task's velocity while airborne on 30% of
    steps, or for stand a mean pitch of 30 degrees), the two LTEs' angle and the
    training tasks whose LTEs lie nearest along the path.
    """
    family = "halfcheetah-runjump"
    if args.env and family not in args.env:
        say(f"compose: skipped ({family} not among --env)")
        return {}
    path = os.path.join(args.checkpoints, f"{family}.pt")
    if not os.path.isfile(path):
        say(f"compose: no {path}; train it with `python train.py --env {family}`; skipping")
        return {}
    numbers = _compose_one(args, path, family, "")
    # Other run-jump checkpoints beside it (e.g. halfcheetah-runjump-four-motion.pt, with
    # stand tasks) get their own figure and table and a key of their own in the summary.
    for name in sorted(os.listdir(args.checkpoints)):
        if name.startswith(f"{family}-") and name.endswith(".pt") and not name.endswith(".latest.pt"):
            suffix = name[len(family) + 1:-3]
            if args.run or args.jump or args.stand:
                say(f"compose: {name} skipped (--run/--jump/--stand name tasks of {family}.pt)")
                continue
            numbers[suffix] = _compose_one(args, os.path.join(args.checkpoints, name), family, suffix)
    return numbers


def composed_tasks(policy, family: str, args) -> tuple:
    """The run task and the other motions (jump, stand when there is one) to compose
    with it: --run/--jump/--stand, else the median run task and the strongest others."""
    kinds = {k: [i for i, t in enumerate(policy.tasks) if t[0] == k] for k in envs.TASK_KINDS}

    def pick(kind, text, default):
        if text:
            try:
                index = task_index(policy, family, text)
            except ValueError as error:
                _fail(f"compose --{kind}: {error}")
            if policy.tasks[index][0] != kind:
                _fail(f"compose --{kind} {text} is not a {kind} task")
            return index
        return default(kinds[kind]) if kinds[kind] else None

    run = pick("run", args.run, lambda ids: sorted(ids, key=lambda i: policy.tasks[i][1])[len(ids) // 2])
    others = [pick(k, getattr(args, k), lambda ids: max(ids, key=lambda i: policy.tasks[i][1])) for k in ("jump", "stand")]
    return run, [other for other in others if other is not None]


def settled_steps(steps: int) -> int:
    """The first step compose measures from: after the start-up fall from the initial
    pose, as the velocity is, when an episode of `steps` is long enough to have them."""
    return policy_lib.SETTLE_STEPS if steps > policy_lib.SETTLE_STEPS + 10 else 0


def composition(policy, family: str, run: int, others: list, args) -> tuple[dict, dict]:
    """compose's numbers at the one weight --mix (no files): for the run task, each
    other motion and each nlerp mix of the two, velocity, mean and peak root height and
    the airborne fraction over the settled steps (means over --episodes); and episode
    1's time series for the figure."""
    E, label = policy.task_embeddings, (lambda i: envs.task_label(policy.tasks[i]))
    combos = [(label(run), E[run])]
    for other in others:
        combos += [(label(other), E[other]), (f"{label(run)} + {label(other)}", nlerp(E[run], E[other], args.mix))]
    episodes = args.episodes
    result, env = simulate(policy, family, np.repeat([lte for _, lte in combos], episodes, axis=0), args, record=True)
    heights = result["height_steps"].reshape(len(result["height_steps"]), len(combos), episodes)
    velocity = result["velocity"].reshape(len(combos), episodes)
    settled = settled_steps(len(heights))  # height statistics over the same steps as the velocity
    numbers = {"mix": args.mix, "airborne_height_m": args.airborne_height}
    for c, (name, _) in enumerate(combos):
        h = heights[settled:, c]
        numbers[name] = {"velocity": float(velocity[c].mean()), "velocity_std": float(velocity[c].std()),
                         "height_mean": float(np.nanmean(h)), "height_peak_mean": float(np.nanmean(np.nanmax(h, axis=0))),
                         "height_peak_max": float(np.nanmax(h)), "airborne_fraction": float(np.nanmean(h > args.airborne_height))}
    trace = {"names": [name for name, _ in combos], "t": np.arange(len(heights)) * env.dt, "settled": settled,
             "velocity": result["velocity_steps"].reshape(heights.shape)[:, :, 0], "height": heights[:, :, 0]}
    return numbers, trace


def draw_composition(title: str, numbers: dict, trace: dict, episodes: int, path: str) -> None:
    fig, (ax_v, ax_h) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for c, name in enumerate(trace["names"]):
        stats, style = numbers[name], "-" if "+" in name else ":"
        ax_v.plot(trace["t"], trace["velocity"][:, c], style, lw=1.2, label=f"{name}: {stats['velocity']:.2f} m/s")
        ax_h.plot(trace["t"], trace["height"][:, c], style, lw=1.2, label=f"{name}: mean {stats['height_mean']:.2f} m, "
                  f"peak {stats['height_peak_mean']:.2f} m, high {100 * stats['airborne_fraction']:.0f}%")
    threshold = numbers["airborne_height_m"]
    ax_h.axhline(threshold, color="gray", ls="--", lw=0.8, label=f"airborne threshold {threshold:g} m")
    ax_v.set(ylabel="forward velocity (m/s)", title=f"{title}: composing LTEs (nlerp weight {numbers['mix']:g}), "
             f"episode 1 of {episodes};\nnumbers: means over all episodes, steps {trace['settled']}-{len(trace['t'])}")
    ax_h.set(xlabel="time (s)", ylabel="root height z (m, 0 = start pose)")
    for ax in (ax_v, ax_h):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def _compose_one(args, path: str, family: str, suffix: str) -> dict:
    """compose for one checkpoint: compose[_SUFFIX].png/csv and compose[_SUFFIX]_sweep.png/csv."""
    policy = _load(path, family)
    run, others = composed_tasks(policy, family, args)
    if run is None or not others or policy.tasks[others[0]][0] != "jump":
        say(f"compose: {path} has no run and jump tasks; skipping")
        return {}
    numbers, trace = composition(policy, family, run, others, args)
    for name in trace["names"]:
        if "+" in name:
            stats = numbers[name]
            parts = " | ".join(f"{p} alone {numbers[p]['velocity']:.2f} m/s, mean height {numbers[p]['height_mean']:.2f} m, "
                               f"airborne {100 * numbers[p]['airborne_fraction']:.0f}%" for p in name.split(" + "))
            say(f"compose{' ' + suffix if suffix else ''} {name} (nlerp {args.mix:g}): {stats['velocity']:.2f} m/s, mean "
                f"height {stats['height_mean']:.2f} m, peak {stats['height_peak_mean']:.2f} m, airborne "
                f"{100 * stats['airborne_fraction']:.0f}% | {parts}")
    title, stem = envs.FAMILIES[family].title + (f" {suffix}" if suffix else ""), f"compose_{suffix}" if suffix else "compose"
    draw_composition(title, numbers, trace, args.episodes, os.path.join(args.out, f"{stem}.png"))
    write_csv(os.path.join(args.out, f"{stem}.csv"), [{"embedding": name, **{k: round(v, 4) for k, v in numbers[name].items()},
                                                       "episodes": args.episodes} for name in trace["names"]])
    sweep = mixing_sweep(policy, family, run, others, args, trace["settled"])
    pairs = {name: pair for name, pair in sweep.items() if isinstance(pair, dict)}  # in the order of `others`
    for (name, pair), other in zip(pairs.items(), others):
        for method in ("nlerp", "slerp"):
            series, best = pair[method], sweep["alphas"].index(pair[method]["best_moving_alpha"])
            say(f"compose sweep {name} {method}: composes at alpha {series['composes_at'] or 'none'}; "
                f"moving (>= {0.5 * pair['nlerp']['velocity'][0]:.2f} m/s) and most "
                f"{'airborne' if policy.tasks[other][0] == 'jump' else 'reared'} "
                f"at alpha {series['best_moving_alpha']:.2f}: {series['velocity'][best]:.2f} m/s, airborne "
                f"{100 * series['airborne_fraction'][best]:.0f}%, pitch {series['pitch_mean_deg'][best]:.0f} deg")
        say(f"compose sweep {name}: the LTEs are {pair['angle_deg']:.0f} deg apart; the nlerp path passes "
            f"{' -> '.join(dict.fromkeys(pair['path_nearest_task']))} and strays up to "
            f"{pair['path_farthest_from_training_deg']:.0f} deg from every training LTE")
    draw_mixing_sweep(title, sweep["alphas"], pairs, args, trace["settled"], os.path.join(args.out, f"{stem}_sweep.png"))
    write_csv(os.path.join(args.out, f"{stem}_sweep.csv"),
              [{"pair": name, "method": method, "alpha": round(a, 4),
                **{k: round(pair[method][k][i], 4) for k in SWEEP_MEASURES}, "episodes": args.episodes}
               for name, pair in pairs.items() for method in ("nlerp", "slerp") for i, a in enumerate(sweep["alphas"])])
    numbers["mixing_sweep"] = sweep
    return numbers


REAR_DEG = 30.0  # a stand mix "rears" when the torso's mean pitch is at least this far nose-up
SWEEP_MEASURES = ("velocity", "height_mean", "height_peak", "airborne_fraction", "pitch_mean_deg", "pitch_peak_deg")


def mixing_sweep(policy, family: str, run: int, others: list, args, settled: int) -> dict:
    """Run + jump (and run + stand) at every mixing weight alpha of --alphas in [0, 1],
    by nlerp and by slerp (no files): forward velocity, mean and peak root height,
    airborne fraction and torso pitch (nose up, degrees; env.step's info["pitch"]) over the
    same steps as the velocity. A mix composes when it keeps at least half the run
    task's velocity while airborne on at least 30% of steps (jump) or rearing, mean
    pitch >= REAR_DEG (stand)."""
    E, label = policy.task_embeddings, (lambda i: envs.task_label(policy.tasks[i]))
    alphas, episodes = np.linspace(0.0, 1.0, args.alphas), args.episodes
    methods = {"nlerp": nlerp, "slerp": slerp}
    ltes = np.array([fn(E[run], E[o], a) for o in others for fn in methods.values() for a in alphas])
    result, _ = simulate(policy, family, np.repeat(ltes, episodes, axis=0), args, record=True)
    shape = (len(others), len(methods), len(alphas), episodes)
    heights = result["height_steps"][settled:].reshape(-1, *shape)
    pitch = result["pitch_steps"][settled:].reshape(-1, *shape)
    velocity = result["velocity"].reshape(shape).mean(-1)
    measures = {"velocity": velocity, "height_mean": np.nanmean(heights, axis=(0, -1)),
                "height_peak": np.nanmean(np.nanmax(heights, axis=0), axis=-1),
                "airborne_fraction": np.nanmean(heights > args.airborne_height, axis=(0, -1)),
                "pitch_mean_deg": np.nanmean(pitch, axis=(0, -1)), "pitch_peak_deg": np.nanmean(np.nanmax(pitch, axis=0), axis=-1)}
    numbers = {"alphas": alphas.tolist(), "rear_deg": REAR_DEG}
    for p, other in enumerate(others):
        kind = policy.tasks[other][0]
        run_velocity = float(velocity[p, 0, 0])  # alpha = 0 is the run task itself
        # Where the path runs on the sphere: the two LTEs' angle, and along the nlerp
        # path the nearest training LTE (which task's region the mix falls into).
        path = np.array([nlerp(E[run], E[other], a) for a in alphas])
        to_trained = np.degrees(np.arccos(np.clip(path @ E.T, -1.0, 1.0)))
        pair = {"angle_deg": float(np.degrees(np.arccos(np.clip(E[run] @ E[other], -1.0, 1.0)))),
                "path_farthest_from_training_deg": float(to_trained.min(1).max()),
                "path_nearest_task": [label(i) for i in to_trained.argmin(1)]}
        for m, method in enumerate(methods):
            moving = velocity[p, m] >= 0.5 * run_velocity
            score = measures["airborne_fraction"][p, m] if kind == "jump" else measures["pitch_mean_deg"][p, m]
            doing = score >= (0.3 if kind == "jump" else REAR_DEG)
            composes = moving & doing & (alphas > 0) & (alphas < 1)
            best = int(np.argmax(np.where(moving & (alphas < 1), score, -np.inf)))
            pair[method] = {**{k: v[p, m].tolist() for k, v in measures.items()},
                            "composes_at": [float(a) for a in alphas[composes]], "best_moving_alpha": float(alphas[best])}
        numbers[f"{label(run)} + {label(other)}"] = pair
    return numbers


def draw_mixing_sweep(title: str, alphas: list, pairs: dict, args, settled: int, path: str) -> None:
    panels = {"velocity": "forward velocity (m/s)", "height_mean": "mean root height (m)",
              "airborne_fraction": f"airborne fraction (z > {args.airborne_height:g} m)",
              "pitch_mean_deg": "mean torso pitch (deg, nose up)"}
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 3.9))
    for p, (name, pair) in enumerate(pairs.items()):
        for method, style in (("nlerp", "-"), ("slerp", "--")):
            for ax, (key, panel) in zip(axes, panels.items()):
                ax.plot(alphas, pair[method][key], style, marker="o", ms=3, color=f"C{p}", label=f"{name}, {method}")
                ax.set(xlabel=f"mixing weight α (0: {name.split(' + ')[0]})", title=panel)
    first = next(iter(pairs.values()))
    axes[0].axhline(0.5 * first["nlerp"]["velocity"][0], color="gray", ls=":", lw=0.8, label="half the run task's velocity")
    axes[2].axhline(0.3, color="gray", ls=":", lw=0.8)
    axes[3].axhline(REAR_DEG, color="gray", ls=":", lw=0.8)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: composing the run LTE with the others, every mixing weight "
                 f"({args.episodes} deterministic episodes each, steps {settled}-{envs.MAX_STEPS})", fontsize=10)
    _save(fig, path)


# --------------------------------------------------------------------------
# sphere
# --------------------------------------------------------------------------


def sphere(args) -> dict:
    """The self-organised LTE space (paper Sec. 5.2): the behaviour over the whole sphere.

    The trained LTEs on S^2 and --directions Fibonacci-lattice directions, one
    rollout each, coloured by the velocity (Ant: heading, and speed) they produce.
    neighbour_ratio = mean |b_i - b_nn(i)| / mean |b_i - b_j| over the lattice
    (nn: nearest lattice neighbour; j: random partner): 0 is a perfectly smooth
    behaviour map, 1 a map with no spatial structure. lte_nearest_is_adjacent_task:
    fraction of trained LTEs whose nearest other LTE belongs to a neighbouring task
    in the task list (1: the LTEs lie on a curve in task order).
    """
    numbers = {}
    directions = fibonacci_sphere(args.directions)
    for family, policy in checkpoints(args, "sphere", list(envs.FAMILIES)):
        stats, columns, panels = behaviour_map(policy, family, directions, args)
        b = columns[envs.FAMILIES[family].behaviour_column]
        if "fraction_in_trained_range" in stats:
            say(f"sphere {family}: {len(b)} directions give {b.min():.2f} to {b.max():.2f} m/s, "
                f"{100 * stats['fraction_in_trained_range']:.0f}% inside the trained range, neighbour ratio "
                f"{stats['neighbour_ratio']:.2f} (0 smooth, 1 unstructured), nearest LTE is an adjacent task for "
                f"{100 * stats['lte_nearest_is_adjacent_task']:.0f}%")
        else:
            say(f"sphere {family}: {len(b)} directions cover {stats['heading_sectors_covered']}/24 heading sectors of "
                f"15 degrees at > 0.5 m/s, neighbour ratio {stats['neighbour_ratio']:.2f} (0 smooth, 1 unstructured)")
        draw_sphere(family, policy, directions, panels, os.path.join(args.out, f"sphere_{family}.png"))
        write_csv(os.path.join(args.out, f"sphere_{family}.csv"),
                  [{k: round(float(v[i]), 4) for k, v in columns.items()} for i in range(len(directions))])
        numbers[family] = stats
    return numbers


def behaviour_map(policy, family: str, directions: np.ndarray, args) -> tuple[dict, dict, list]:
    """sphere's numbers for one checkpoint (no files): one deterministic rollout per
    direction; the neighbour ratio, the trained LTEs' order and the behaviour's range
    (stats), the per-direction columns of the CSV, and the figure's panels
    (values, colour-bar label, colour map)."""
    nearest = np.argmax(directions @ directions.T - 2 * np.eye(len(directions)), axis=1)
    partner = np.random.default_rng(args.seed).permutation(len(directions))
    result, env = simulate(policy, family, directions, args)
    record, E = env.family, policy.task_embeddings
    b = env.behaviour(result)
    diff = lambda x, y: np.abs(record.difference(x, y))
    spread = np.mean(diff(b, b[partner]))
    stats = {"directions": len(directions),
             "neighbour_ratio": float(np.mean(diff(b, b[nearest])) / spread) if spread > 0 else float("nan")}
    # Do the trained LTEs lie in task order? Nearest other LTE should be a neighbouring task.
    angles = np.degrees(np.arccos(np.clip(E @ E.T, -1, 1))) + 1e3 * np.eye(len(E))
    stats["lte_nearest_is_adjacent_task"] = float(np.mean(np.abs(np.argmin(angles, axis=1) - np.arange(len(E))) == 1))
    stats["lte_adjacent_angle_deg"] = float(np.mean(np.diagonal(angles, 1)))
    if record.kinds[0] == "run":  # a velocity per direction
        targets = [target_of(family, t) for t in policy.tasks if target_of(family, t) is not None]
        inside = (b >= min(targets) - 0.5) & (b <= max(targets) + 0.5)
        stats.update(velocity_min=float(b.min()), velocity_max=float(b.max()), fraction_in_trained_range=float(inside.mean()))
        panels = [(b, "forward velocity (m/s)", "viridis")]
        if record.multi_modal:  # jump (and stand) tasks: how high each direction goes
            panels.append((result["height_mean"], "mean root height (m)", "magma"))
    else:  # a heading per direction
        speed = np.linalg.norm(result["velocity"], axis=1)
        sectors = np.unique(np.round(envs.wrap_degrees(b[speed > 0.5]) / 15.0) % 24)
        stats.update(heading_sectors_covered=int(len(sectors)), speed_max=float(speed.max()))
        panels = [(b, "heading (degrees)", "twilight"), (speed, "speed (m/s)", "viridis")]
    columns = {"x": directions[:, 0], "y": directions[:, 1], "z": directions[:, 2], record.behaviour_column: b,
               "height_mean": result["height_mean"], "return": result["return"], "fell": result["fell"]}
    return stats, columns, panels


def draw_sphere(family: str, policy, directions: np.ndarray, panels: list, path: str) -> None:
    """Each panel on the sphere (3-d) and as a longitude-latitude map, the trained LTEs as stars."""
    E = policy.task_embeddings
    lon, lat = np.degrees(np.arctan2(directions[:, 1], directions[:, 0])), np.degrees(np.arcsin(directions[:, 2]))
    e_lon, e_lat = np.degrees(np.arctan2(E[:, 1], E[:, 0])), np.degrees(np.arcsin(np.clip(E[:, 2], -1, 1)))
    fig = plt.figure(figsize=(11, 4.4 * len(panels)))
    for k, (values, name, cmap) in enumerate(panels):
        ax3 = fig.add_subplot(len(panels), 2, 2 * k + 1, projection="3d")
        dots = ax3.scatter(*directions.T, c=values, cmap=cmap, s=max(6.0, 4000 / len(directions)), alpha=0.85)
        ax3.plot(*E.T, "k-", lw=1)
        ax3.scatter(*(1.08 * E).T, marker="*", c="k", s=60, label="trained LTEs")
        ax3.set(title=f"trained LTEs and lattice, colour: {name.split(' (')[0]}", xlabel="x", ylabel="y", zlabel="z")
        ax3.set_box_aspect((1, 1, 1))
        ax3.legend(fontsize=7, loc="upper left")
        ax = fig.add_subplot(len(panels), 2, 2 * k + 2)
        ax.scatter(lon, lat, c=values, cmap=cmap, s=max(8.0, 6000 / len(directions)))
        ax.plot(e_lon, e_lat, "k*", ms=9)
        for lo, la, task in zip(e_lon, e_lat, policy.tasks):
            ax.annotate(envs.task_label(task), (lo, la), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude of the LTE (degrees)",
               ylabel="latitude of the LTE (degrees)", title="the same, as a longitude-latitude map")
        fig.colorbar(dots, ax=ax, label=name)
    fig.suptitle(f"{envs.FAMILIES[family].title}: behaviour over the LTE sphere ({len(directions)} Fibonacci-lattice "
                 f"directions, one deterministic rollout each; stars: trained LTEs)", y=1.0)
    _save(fig, path)


# --------------------------------------------------------------------------
# equivariance
# --------------------------------------------------------------------------


def equivariance(args) -> dict:
    """The LSE's equivariance: orbits over the gait and one rotation per step.

    LSE trajectories s_t of every training task (steps 50-200, deterministic),
    projected to their first two principal components, and this measure (ours):
        R* = argmin_{R in O(16)} sum_t ||R s_t - s_{t+1}||^2   (orthogonal Procrustes:
             R* = U V^T from the SVD  sum_t s_{t+1} s_t^T = U S V^T)
        residual = sum_t ||R* s_t - s_{t+1}||^2 / sum_t ||s_t - s_{t+1}||^2
    i.e. the part of each step that one fixed rotation cannot explain, relative to
    standing still (R = I). 0: the time shift acts on the LSE as one fixed rotation
    (equivariant: the gait is an orbit of a group action); 1: a rotation predicts
    the next LSE no better than the current one. "shuffled" is the same residual
    with the time order randomly permuted (mean of 20 permutations): the chance
    level of fitting a rotation (16*15/2 free parameters) to steps with no order.
    Also reported: step_deg, the mean angle the LSE turns per step (a nearly still
    LSE makes any residual meaningless: below 0.01 degrees per step the residual
    is NaN), and NaN for trajectories shorter than 2*16 + 2 steps (falls).
    """
    numbers = {}
    for family, policy in checkpoints(args, "equivariance", list(envs.FAMILIES)):
        stats, scores, orbits = lse_equivariance(policy, family, args)
        draw_equivariance(family, policy, stats, scores, orbits, os.path.join(args.out, f"equivariance_{family}.png"))
        write_csv(os.path.join(args.out, f"equivariance_{family}.csv"),
                  [{"task": envs.task_label(t), **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in s.items()}}
                   for t, s in zip(policy.tasks, scores)])
        numbers[family] = stats
        if not stats["tasks_scored"]:
            say(f"equivariance {family}: no task has a moving LSE trajectory of {2 * orbits['lse'].shape[-1] + 2}+ steps "
                f"(falls, or a policy that stands still); nothing to score")
            continue
        say(f"equivariance {family}: Procrustes residual {stats['residual_mean']:.3f} in time order vs "
            f"{stats['shuffled_mean']:.3f} shuffled (0 = exactly equivariant), LSE turns "
            f"{stats['step_deg_mean']:.2f} deg per step, mean over {stats['tasks_scored']}/{len(scores)} tasks")
    return numbers


def lse_equivariance(policy, family: str, args) -> tuple[dict, list, dict]:
    """equivariance's numbers for one checkpoint (no files): the LSE trajectory of
    every training task after the settling steps, its equivariance_score, the means
    over tasks, and the trajectories with their principal axes for the figure."""
    result, _ = simulate(policy, family, policy.task_embeddings, args, record=True)
    with torch.no_grad():
        lse = policy.lse(torch.as_tensor(result["obs"], dtype=torch.float32)).double().numpy()  # (steps, T, 16)
    start = policy_lib.SETTLE_STEPS if len(lse) > policy_lib.SETTLE_STEPS + 10 else len(lse) // 4
    lse = lse[start:]
    scores = [equivariance_score(lse[:, k], seed=args.seed) for k in range(len(policy.tasks))]
    points = lse.reshape(-1, lse.shape[-1])
    points = points[np.isfinite(points).all(axis=1)]
    mean = points.mean(axis=0)
    _, singular, vt = np.linalg.svd(points - mean, full_matrices=False)
    explained = singular ** 2 / np.sum(singular ** 2)
    finite_mean = (lambda v: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan"))
    column = lambda key: np.array([s[key] for s in scores])
    stats = {"residual_mean": finite_mean(column("residual")), "shuffled_mean": finite_mean(column("shuffled")),
             "step_deg_mean": finite_mean(column("step_deg")), "tasks_scored": int(np.isfinite(column("residual")).sum()),
             "per_task": {envs.task_label(t): s for t, s in zip(policy.tasks, scores)},
             "pca_explained_2": float(explained[:2].sum())}
    return stats, scores, {"lse": lse, "start": start, "mean": mean, "axes": vt[:2], "explained": explained}


def draw_equivariance(family: str, policy, stats: dict, scores: list, orbits: dict, path: str) -> None:
    """Up to five tasks' LSE trajectories on the first two principal axes, and the residual per task."""
    lse, start, explained = orbits["lse"], orbits["start"], orbits["explained"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    shown = sorted(set(np.linspace(0, len(policy.tasks) - 1, min(5, len(policy.tasks))).round().astype(int)))
    for k, color in zip(shown, plt.cm.viridis(np.linspace(0, 0.9, len(shown)))):
        xy = (lse[:, k] - orbits["mean"]) @ orbits["axes"].T
        ax.plot(xy[:, 0], xy[:, 1], "-", color=color, lw=0.9, label=f"task {envs.task_label(policy.tasks[k])}")
        ax.plot(xy[0, 0], xy[0, 1], "o", color=color, ms=4)
    ax.set(xlabel=f"PC 1 of the LSE ({100 * explained[0]:.0f}% of variance)", ylabel=f"PC 2 ({100 * explained[1]:.0f}%)",
           title=f"LSE trajectories, steps {start}-{start + len(lse)} (dot: first step)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    x = np.arange(len(policy.tasks))
    bx.bar(x - 0.2, [s["residual"] for s in scores], 0.4, label="time order")
    bx.bar(x + 0.2, [s["shuffled"] for s in scores], 0.4, color="gray", label="shuffled time order")
    bx.set_xticks(x, [envs.task_label(t) for t in policy.tasks], rotation=90 if len(x) > 12 else 0, fontsize=7)
    bx.set(xlabel="training task", ylabel="Procrustes residual (0 = one rotation per step)", ylim=(0, 1.05),
           title="residual of the best rotation LSE_t -> LSE_t+1")
    bx.legend(fontsize=7)
    fig.suptitle(f"{envs.FAMILIES[family].title}: latent sensory embeddings (LSE) over the gait, deterministic actions", y=1.02)
    _save(fig, path)


# --------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------


def _family_measure(family: str, metrics: dict) -> dict:
    """The family's own error measure from train.evaluate's metrics (the results table's columns)."""
    per_task = lambda prefix: [v for k, v in metrics.items() if k.startswith(prefix) and np.isfinite(v)]
    errors = per_task("error[")
    measure = {"error": metrics["mean_error"], "worst_error": max(errors) if errors else float("nan"),
               "error_unit": envs.FAMILIES[family].error_unit, "fell": metrics["fell"],
               "speed_along": metrics.get("mean_speed_along", float("nan"))}
    for kind in envs.TASK_KINDS[1:]:  # jump, stand: one column each in every row
        heights = per_task(f"height[{kind}:")
        measure[f"{kind}_height"] = float(np.mean(heights)) if heights else float("nan")
    pitches = per_task("pitch[stand:")
    measure["stand_pitch"] = float(np.mean(pitches)) if pitches else float("nan")
    return measure


def _fresh_evaluation(policy, args) -> dict:
    """train.evaluate on the policy's own tasks, from resets unlike those of the
    evaluations during training (seed + 10000)."""
    seed = args.seed + 10_000
    return train.evaluate(policy, envs.make(policy.env_name, tasks=policy.tasks, seed=seed), args.episodes, seed=seed)


def evaluation_row(name: str, policy, args) -> tuple[dict, dict]:
    """evaluate's numbers for one checkpoint (no files): its training budget, mean
    return and the family's error measure (unrounded, for the table) on fresh episodes."""
    metrics = _fresh_evaluation(policy, args)
    measure = _family_measure(policy.env_name, metrics)
    progress = policy.progress
    row = {"checkpoint": name, "env": policy.env_name, "policy": "baseline" if policy.baseline else "EAR",
           "tasks": len(policy.tasks), "epochs": progress.get("epoch"), "updates": progress.get("updates"),
           "env_steps": progress.get("env_steps"), "wall_clock_min": round(progress.get("wall_clock", float("nan")) / 60.0, 1),
           "episodes": args.episodes, "mean_return": round(metrics["mean_return"], 2),
           **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in measure.items()}}
    return row, measure


def evaluation_table(rows: list, measures: list, episodes: int) -> str:
    """The results table as Markdown, from the unrounded measures (no double rounding)."""
    lines = ["| checkpoint | policy | updates | env steps | wall-clock | mean return | error measure (deterministic, "
             f"{episodes} episodes per task) | falls |", "|---|---|---|---|---|---|---|---|"]
    for row, measure in zip(rows, measures):
        lines.append(f"| {row['checkpoint']} | {row['policy']} | {row['updates']:,} | {row['env_steps'] / 1e6:.2f}M | "
                     f"{row['wall_clock_min']} min | {row['mean_return']:.1f} | "
                     f"{envs.FAMILIES[row['env']].describe(measure)} | {measure['fell']:.0%} |")
    return "\n".join(lines) + "\n"


def evaluate(args) -> dict:
    """The results table: a fresh deterministic evaluation of every checkpoint.

    Every checkpoint in --checkpoints (EAR and baselines), --episodes deterministic
    episodes per training task from fresh resets (seed + 10000), with its training
    budget (updates, env steps, wall-clock) and the family's own error measure:
    velocity error in m/s (mean and worst task) and falls for the velocity
    families; heading error in degrees and mean speed along the commanded
    direction for Ant-Dir; run-task velocity error and mean root height z of the
    jump (and stand) tasks for the run-jump cheetah. Writes evaluate.csv and
    evaluate.md (the table as Markdown).
    """
    names = sorted(n for n in os.listdir(args.checkpoints) if n.endswith(".pt") and not n.endswith(".latest.pt"))
    rows, measures = [], []
    for name in names:
        try:
            policy = policy_lib.load(os.path.join(args.checkpoints, name))
        except policy_lib.CheckpointError as error:
            say(f"evaluate: skipping {name} ({error})")
            continue
        if args.env and policy.env_name not in args.env:
            continue
        row, measure = evaluation_row(name, policy, args)
        rows.append(row)
        measures.append(measure)
        say(f"evaluate {name}: {row['policy']}, {row['updates']} updates, {row['env_steps']} env steps, "
            f"{row['wall_clock_min']} min; mean return {row['mean_return']:.1f}, "
            f"{envs.FAMILIES[row['env']].describe(measure)}, falls {measure['fell']:.0%}")
    if not rows:
        say(f"evaluate: no checkpoints in {args.checkpoints}; skipping")
        return {}
    write_csv(os.path.join(args.out, "evaluate.csv"), rows)
    policy_lib.atomic_write_text(evaluation_table(rows, measures, args.episodes), os.path.join(args.out, "evaluate.md"))
    return {row["checkpoint"][:-3]: row for row in rows}


# --------------------------------------------------------------------------
# seeds: a sweep's runs grouped by configuration, with intervals over seeds
# --------------------------------------------------------------------------

RUN_SETTINGS = ("seed", "threads", "precision", "device")  # differ between seeds and machines, not configurations
SEED_METRICS = {"final_error": "final mean error", "best_error": "best mean error",
                "final_return": "final mean return", "best_return": "best mean return"}
MEASURE_TITLES = {"error": "fresh mean error", "worst_error": "fresh worst-task error", "fell": "falls"}  # seeds --evaluate
MEASURE_PREFIXES = {"r2 ": "interpolation R² ", "adapt ": "adaptation error ", "at ": "training error at ",
                    "compose ": "composition "}


def measure_title(key: str) -> str:
    """A run_measures key as a column title: "r2 3->4" reads "interpolation R² 3->4",
    "adapt 3.6" reads "adaptation error 3.6"."""
    if key in MEASURE_TITLES:
        return MEASURE_TITLES[key]
    for prefix, title in MEASURE_PREFIXES.items():
        if key.startswith(prefix):
            return title + key[len(prefix):]
    return key


def measured_keys(groups: dict) -> list:
    """The run_measures keys of any group, in first-seen order (seeds --evaluate)."""
    return list(dict.fromkeys(key for group in groups.values() for key in group["measured"]))


def run_measures(policy, args) -> dict:
    """A checkpoint's claims measured afresh (no files): the family's error measure
    on --episodes deterministic episodes per training task from fresh resets (as
    `evaluate`: "error", "worst_error", "fell"); for an EAR policy, the
    interpolation R^2 against the targets (nlerp, deterministic actions, as
    `interpolate`: "r2 A->B") of the family's own pairs; and with --adapt-budget,
    the error after few-shot adaptation to each of the family's unseen test tasks
    ("adapt T": `adapt.py --task T`, the bracket search in the embedding space with
    that many episodes, then --episodes deterministic ones, adaptation seed 0; the
    plain multi-task baseline searches its task-input space the same way); for an
    EAR policy with run and jump tasks, composition_measures."""
    family = policy.env_name
    measure = _family_measure(family, _fresh_evaluation(policy, args))
    numbers = {k: measure[k] for k in ("error", "worst_error", "fell")}
    if not policy.baseline:
        pairs = interpolation_pairs(policy, family, envs.FAMILIES[family].pairs, [])
        for name, pair in interpolation(policy, family, pairs, args).items():
            numbers[f"r2 {name}"] = pair["nlerp_deterministic"]["r2_targets"]
    if not policy.baseline and any(isinstance(task, tuple) and task[0] == "jump" for task in policy.tasks):
        numbers.update(composition_measures(policy, family, args))
    for task in envs.FAMILIES[family].test_tasks if args.adapt_budget else ():
        report = adapt.adapt(policy, task, "bracket", args.adapt_budget, seed=0, eval_episodes=args.episodes)
        numbers[f"adapt {envs.task_label(task)}"] = math.nan if report["error"] is None else report["error"]
    return numbers


def composition_measures(policy, family: str, args) -> dict:
    """compose's mixing sweep as numbers over seeds (no files): for run + jump (and
    run + stand), the two LTEs' angle on the sphere in degrees ("compose RUN + JUMP
    angle"), how many mixing weights of --alphas compose by nlerp or slerp
    ("... weights") and, at the most airborne (for stand: most reared)
    mix that keeps half the run task's velocity, its airborne fraction ("... best
    airborne") or mean pitch in degrees ("... best pitch"), the better of nlerp and slerp."""
    run, others = composed_tasks(policy, family, args)
    settled = settled_steps(args.steps)
    sweep = mixing_sweep(policy, family, run, others, args, settled)
    numbers = {}
    for other in others:
        name = f"{envs.task_label(policy.tasks[run])} + {envs.task_label(policy.tasks[other])}"
        pair, jump = sweep[name], policy.tasks[other][0] == "jump"
        key = "airborne_fraction" if jump else "pitch_mean_deg"
        numbers[f"compose {name} angle"] = pair["angle_deg"]
        numbers[f"compose {name} weights"] = len({a for m in ("nlerp", "slerp") for a in pair[m]["composes_at"]})
        numbers[f"compose {name} best {'airborne' if jump else 'pitch'}"] = max(
            pair[m][key][sweep["alphas"].index(pair[m]["best_moving_alpha"])] for m in ("nlerp", "slerp"))
    return numbers


def draw_over_seeds(groups: dict, columns: dict, title: str, path: str) -> None:
    """Per column (a panel titled by `columns`), a bar per group (mean over its seeds)
    with its seeds as dots; groups[label][column] holds "values" (a group without
    the column gets no bar)."""
    ncols = min(5, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(columns):]:
        ax.set_axis_off()
    for ax, (column, panel) in zip(axes.flat, columns.items()):
        for g, stats in enumerate(groups.values()):
            values = np.asarray(stats.get(column, {}).get("values", []), dtype=float)
            if np.isfinite(values).any():
                ax.bar(g, np.nanmean(values), color=f"C{g}", alpha=0.5)
                ax.plot([g] * len(values), values, "ko", ms=4)
        ax.set_xticks(range(len(groups)), [label.replace(", ", "\n") for label in groups])
        ax.set_title(panel)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def seed_statistics(values, reps: int = 2000, seed: int = 0, iqm: bool = True) -> dict:
    """Mean and interquartile mean (IQM) of one number per run, each with its 95%
    percentile-bootstrap interval over the runs (rliable's stratified bootstrap, Agarwal
    et al. 2021, with the runs as the one stratum), and the per-run values. NaNs (a
    run that measured nothing) are left out and counted. iqm=False skips the IQM (NaN):
    it is the slow half, and meaningless over three runs."""
    from rliable import library as rly
    from rliable import metrics as rly_metrics
    values = np.asarray(values, dtype=float)
    kept = values[np.isfinite(values)]
    stats = {"values": values.tolist(), "n": int(len(kept)), "missing": int(len(values) - len(kept))}
    if len(kept) == 0:
        return {**stats, **{k: float("nan") for k in ("mean", "mean_low", "mean_high", "iqm", "iqm_low", "iqm_high",
                                                      "min", "max")}}
    if iqm:
        aggregate = lambda scores: np.array([rly_metrics.aggregate_mean(scores), rly_metrics.aggregate_iqm(scores)])
    else:
        aggregate = lambda scores: np.array([rly_metrics.aggregate_mean(scores), np.nan])
    with warnings.catch_warnings():  # arch (rliable's bootstrap) warns that RandomState is old; it is what rliable passes
        warnings.simplefilter("ignore", FutureWarning)
        point, interval = rly.get_interval_estimates({"runs": kept[:, None]}, aggregate, reps=reps,
                                                     random_state=np.random.RandomState(seed))
    (mean, iqm), ((mean_low, iqm_low), (mean_high, iqm_high)) = point["runs"], interval["runs"]
    return {**stats, "mean": float(mean), "mean_low": float(mean_low), "mean_high": float(mean_high),
            "iqm": float(iqm), "iqm_low": float(iqm_low), "iqm_high": float(iqm_high),
            "min": float(kept.min()), "max": float(kept.max())}


def find_runs(root: str) -> list[dict]:
    """Every training run below `root`: a folder holding NAME.json and NAME.csv from
    train.py (Ray Tune's own folder, tune/, is skipped)."""
    runs = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not (folder == root and d == "tune"))
        for file in sorted(files):
            name, ext = os.path.splitext(file)
            if ext != ".json" or f"{name}.csv" not in files:
                continue
            try:
                with open(os.path.join(folder, file)) as handle:
                    summary = json.load(handle)
            except (OSError, ValueError):
                continue
            if isinstance(summary, dict) and "config" in summary and "epochs" in summary:
                runs.append({"run": os.path.relpath(os.path.join(folder, name), root), "path": os.path.join(folder, name),
                             "summary": summary, "config": summary["config"],
                             "log": read_log(os.path.join(folder, f"{name}.csv"))})
    return runs


def _setting_text(value) -> str:
    """A config value as on the command line: 0.02, true, [64,64], halfcheetah-vel."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def first_reached(log: dict, level: float, column: str) -> float:
    """The log's `column` (wall_clock_s, updates) at the first evaluation with mean
    error <= level (inf: never)."""
    reached = np.flatnonzero(log["mean_error"] <= level)
    return float(log[column][reached[0]]) if len(reached) else math.inf


def error_at(log: dict, updates: float, last: int) -> float:
    """The mean error of the log's last `last` evaluations at or before `updates`
    updates: runs compared at an equal budget (NaN if the log stops short of it)."""
    if not len(log["updates"]) or not log["updates"][-1] >= updates:
        return math.nan
    return float(np.mean(log["mean_error"][log["updates"] <= updates][-last:]))


# --reach's two clocks: wall-clock (the machine's) and updates (the same on every machine)
REACH = {"time_to": ("wall_clock_s", 60, "minutes"), "updates_to": ("updates", 1000, "thousand updates")}


def seeds(args) -> dict:
    """A sweep's runs grouped by configuration, with 95% intervals over seeds (not part of `all`).

    For a sweep's folder (train.py --sweep ... --out OUT --name NAME: OUT/NAME), or
    any folder of train.py runs: the runs grouped by configuration (every Config
    field but seed, threads, precision, device), each configuration's final and best
    mean error and mean return as mean and interquartile mean over its seeds, each
    with its 95% percentile-bootstrap interval (rliable, Agarwal et al. 2021), the
    per-seed values and, with --reach, the wall-clock to each error level ("final":
    the mean of each run's last --last evaluations, default 1); with --at-updates,
    each run's error at those budgets (the mean of its last --last evaluations up
    to K thousand updates), which compares runs at equal updates. With --evaluate,
    each run's saved policy (NAME.pt) is also measured afresh, as `evaluate` and
    `interpolate` measure the shipped ones: the family's error measure on --episodes
    deterministic episodes per training task, falls, for EAR the interpolation
    R^2 against the targets (nlerp, deterministic) of the family's pairs, and the
    error after adapting to each of the family's unseen test tasks as `adapt.py
    --task T` does (--adapt-budget search episodes), and for run-jump policies the
    composition sweep's verdicts (composition_measures); these get the same statistics
    over seeds and a figure of their own, seeds_measures.png.
    Writes seeds.md, seeds.csv and seeds.png into that folder (or --out).
    """
    # Several folders pool their runs (e.g. a pilot beside the runs it is judged against);
    # each run is then named by its folder too.
    runs = [{**run, "run": os.path.join(os.path.basename(os.path.abspath(root)), run["run"]) if len(args.runs) > 1
             else run["run"]} for root in args.runs for run in find_runs(root)]
    if not runs:
        _fail(f"seeds: no training run (NAME.json beside NAME.csv from train.py) below {' or '.join(args.runs)}")
    for run in runs if args.evaluate else []:
        path = run["path"] + ".pt"
        if os.path.isfile(path):
            run["measures"] = run_measures(_load(path, run["config"]["env"]), args)
        else:
            say(f"seeds: {run['run']} has no saved policy {path}; measured from its log only")
    for run in runs:
        budgets = {f"at {k:g}k updates": error_at(run["log"], 1000 * k, args.last) for k in args.at_updates or []}
        run["measures"] = {**run.get("measures", {}), **budgets}
    groups, rows = seed_groups(runs, args)
    for label, group in groups.items():
        e = group["final_error"]
        say(f"seeds {label} ({len(group['runs'])} runs, seeds {group['seeds']}): final error {e['mean']:.3f} "
            f"{group['unit']} [{e['mean_low']:.3f}, {e['mean_high']:.3f}] (IQM {e['iqm']:.3f}), best "
            f"{group['best_error']['mean']:.3f}, final return {group['final_return']['mean']:.1f}; per seed "
            + ", ".join(f"{v:.3f}" for v in e["values"]))
        for key in group["measured"]:
            m = group[key]
            say(f"seeds {label}: {measure_title(key)} {m['mean']:.3f} [{m['mean_low']:.3f}, {m['mean_high']:.3f}]; "
                "per seed " + ", ".join(f"{v:.3f}" for v in m["values"]))
    title = " + ".join(os.path.basename(os.path.abspath(root)) for root in args.runs)
    draw_seeds(groups, runs, title, os.path.join(args.out, "seeds.png"))
    measured = measured_keys(groups)
    if measured:
        draw_over_seeds(groups, {key: measure_title(key) for key in measured},
                        f"{title}: measured afresh, bars = mean over seeds, dots = seeds", os.path.join(args.out, "seeds_measures.png"))
    write_csv(os.path.join(args.out, "seeds.csv"), rows)
    policy_lib.atomic_write_text(f"Runs in {', '.join(args.runs)}; final = mean of the last {args.last} evaluation(s); intervals: "
                                 f"95% percentile bootstrap over seeds ({args.reps} resamples, rliable).\n\n"
                                 f"{seeds_table(groups, args.reach)}\n", os.path.join(args.out, "seeds.md"))
    return groups


def seed_groups(runs: list, args) -> tuple[dict, list]:
    """seeds' numbers (no files): the runs grouped by configuration (every Config field
    but RUN_SETTINGS), labelled by the fields that vary; per group the seed_statistics
    of each SEED_METRICS over its runs and, with --reach, the wall-clock to each level;
    and one CSV row per run."""
    # Runs saved before a field existed read it as what they ran with (train.saved_config).
    key_of = lambda cfg: json.dumps({k: v for k, v in asdict(train.saved_config(cfg)).items() if k not in RUN_SETTINGS},
                                    sort_keys=True)
    members_of: dict[str, list] = {}
    for run in runs:
        members_of.setdefault(key_of(run["config"]), []).append(run)
    configs = [json.loads(key) for key in members_of]
    varying = [k for k in configs[0] if any(c.get(k) != configs[0][k] for c in configs)]
    levels = sorted(args.reach or [], reverse=True)
    groups, rows = {}, []
    for key, members in members_of.items():
        cfg = json.loads(key)
        label = ", ".join(f"{k}={_setting_text(cfg[k])}" for k in varying) or cfg["env"] + ("-baseline" if cfg["baseline"] else "")
        members.sort(key=lambda r: r["config"]["seed"])
        per_run = []
        for run in members:
            log, last = run["log"], slice(-args.last, None)  # "final": the mean of the last --last evaluations
            errors = log["mean_error"][np.isfinite(log["mean_error"])]
            values = {"final_error": float(np.mean(log["mean_error"][last])) if len(log["mean_error"]) else math.nan,
                      "best_error": float(errors.min()) if len(errors) else math.nan,
                      "final_return": float(np.mean(log["mean_return"][last])) if len(log["mean_return"]) else math.nan,
                      "best_return": float(np.nanmax(log["mean_return"])) if len(log["mean_return"]) else math.nan,
                      **{f"{clock}_{level:g}": first_reached(log, level, column) for level in levels
                         for clock, (column, _, _) in REACH.items()}}
            measures = {k: float(v) for k, v in run.get("measures", {}).items()}
            per_run.append({**values, **measures})
            rows.append({"configuration": label, "run": run["run"], "seed": run["config"]["seed"],
                         **{k: run["summary"][k] for k in ("epochs", "updates", "wall_clock_s")},
                         **{k: round(v, 4) if math.isfinite(v) else v for k, v in {**values, **measures}.items()}})
        group = {"configuration": label, "config": cfg, "seeds": [r["config"]["seed"] for r in members],
                 "runs": [r["run"] for r in members], "unit": envs.FAMILIES[cfg["env"]].error_unit,
                 "measured": list(dict.fromkeys(k for run in members for k in run.get("measures", {})))}
        for metric in (*SEED_METRICS, *group["measured"]):
            group[metric] = seed_statistics([v.get(metric, math.nan) for v in per_run], args.reps, args.seed)
        for key in (f"{clock}_{level:g}" for level in levels for clock in REACH):
            times = np.array([v[key] for v in per_run])
            group[key] = {"values": times.tolist(), "reached": int(np.isfinite(times).sum()),
                          "median": float(np.median(times)), "min": float(times.min()), "max": float(times.max())}
        groups[label] = group
    return groups, rows


def seeds_table(groups: dict, reach) -> str:
    """The groups as Markdown: each metric's mean [95% interval], the per-seed final
    errors and the minutes and updates to each --reach level."""
    levels = sorted(reach or [], reverse=True)
    reaches = [(level, clock) for clock in REACH for level in levels]
    measured = measured_keys(groups)
    header = (["configuration", "runs"] + [f"{name} (mean [95% CI])" for name in SEED_METRICS.values()]
              + ["final error per seed"]
              + [f"{REACH[clock][2]} to error ≤ {level:g} (median (range), else per seed)" for level, clock in reaches]
              + [f"{measure_title(key)} (mean [95% CI]; per seed)" for key in measured])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, group in groups.items():
        cells = [label, str(len(group["runs"]))]
        for metric in SEED_METRICS:
            m, digits = group[metric], 3 if "error" in metric else 1
            cells.append(f"{m['mean']:.{digits}f} [{m['mean_low']:.{digits}f}, {m['mean_high']:.{digits}f}]")
        cells.append(", ".join(f"{v:.3f}" for v in group["final_error"]["values"]))
        for level, clock in reaches:
            t, n, unit = group[f"{clock}_{level:g}"], len(group["runs"]), REACH[clock][1]
            cells.append(f"{t['median'] / unit:.1f} ({t['min'] / unit:.1f}-{t['max'] / unit:.1f})" if t["reached"] == n
                         else ", ".join(f"{v / unit:.1f}" if math.isfinite(v) else "never" for v in t["values"])
                         + f" ({t['reached']}/{n})")
        for key in measured:
            m = group.get(key)
            cells.append("" if m is None else f"{m['mean']:.3f} [{m['mean_low']:.3f}, {m['mean_high']:.3f}]; "
                         + ", ".join(f"{v:.3f}" for v in m["values"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_seeds(groups: dict, runs: list, title: str, path: str) -> None:
    """Mean error against env steps and wall-clock: one thin line per seed, the mean over seeds thick."""
    logs = {run["run"]: run["log"] for run in runs}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for g, (label, group) in enumerate(groups.items()):
        members = [logs[name] for name in group["runs"]]
        length = min(len(log["mean_error"]) for log in members)
        for ax, x in zip(axes, ("env_steps", "wall_clock_s")):
            scale = 1e6 if x == "env_steps" else 60.0
            for log in members:
                ax.plot(log[x] / scale, log["mean_error"], color=f"C{g}", alpha=0.35, lw=0.8)
            mean_x = np.mean([log[x][:length] for log in members], axis=0) / scale
            mean_y = np.mean([log["mean_error"][:length] for log in members], axis=0)
            ax.plot(mean_x, mean_y, color=f"C{g}", lw=2.0, label=f"{label} (mean of {len(members)})")
    units = sorted({group["unit"] for group in groups.values()})
    for ax, xlabel in zip(axes, ("environment steps (millions, all tasks)", "wall-clock (minutes)")):
        ax.set(xlabel=xlabel, ylabel=f"mean error over the training tasks ({' or '.join(units)})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: thin lines = seeds, thick = mean over seeds")
    _save(fig, path)


# --------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------


def read_log(path: str) -> dict:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = ("env_steps", "updates", "wall_clock_s", "mean_return", "mean_error")
    try:
        return {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows]) for k in columns}
    except ValueError:
        _fail(f"{path} is not a training log of train.py (non-numeric {columns} columns)")


def curve_stats(log: dict) -> dict:
    """The final and best mean return and error of one training log, and its budget."""
    errors = log["mean_error"]
    return {"final_return": float(log["mean_return"][-1]), "best_return": float(np.nanmax(log["mean_return"])),
            "final_error": float(errors[-1]), "best_error": float(np.nanmin(errors)) if np.isfinite(errors).any()
            else float("nan"), "env_steps": float(log["env_steps"][-1]), "wall_clock_s": float(log["wall_clock_s"][-1])}


def draw_curves(family: str, logs: dict, path: str) -> None:
    """Mean return and mean error against env steps and wall-clock, one line per log."""
    error_unit = envs.FAMILIES[family].error_unit
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for name, log in logs.items():
        for row, (column, label) in enumerate((("mean_return", "mean return over training tasks"),
                                               ("mean_error", f"mean error ({error_unit})"))):
            axes[row, 0].plot(log["env_steps"] / 1e6, log[column], label=name)
            axes[row, 1].plot(log["wall_clock_s"] / 60.0, log[column], label=name)
            axes[row, 0].set(xlabel="environment steps (millions, all tasks)", ylabel=label)
            axes[row, 1].set(xlabel="wall-clock (minutes)", ylabel=label)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{envs.FAMILIES[family].title}: training curves (deterministic evaluation on the training tasks)")
    _save(fig, path)


def curves(args) -> dict:
    """Training curves, EAR against the plain multi-task SAC baseline.

    Mean return and mean error over the training tasks against env steps and
    wall-clock, EAR against the plain multi-task SAC baseline, from the CSV logs.
    """
    numbers = {}
    for family in args.env or list(envs.FAMILIES):
        path = os.path.join(args.checkpoints, f"{family}.csv")
        if not os.path.isfile(path):
            if args.env:
                _fail(f"curves: no training log {path}; train with `python train.py --env {family}`")
            continue
        logs = {"EAR": read_log(path)}
        baseline = os.path.join(args.checkpoints, f"{family}-baseline.csv")
        if os.path.isfile(baseline):
            logs["multi-task SAC baseline"] = read_log(baseline)
        else:
            say(f"curves {family}: no baseline log {baseline}; plotting EAR alone")
        logs = {name: log for name, log in logs.items() if len(log["env_steps"])}
        family_numbers = {}
        for name, log in logs.items():
            stats = family_numbers["ear" if name == "EAR" else "baseline"] = curve_stats(log)
            say(f"curves {family} {name}: final mean return {stats['final_return']:.1f} (best {stats['best_return']:.1f}), "
                f"final error {stats['final_error']:.3f} {envs.FAMILIES[family].error_unit} after "
                f"{stats['env_steps'] / 1e6:.2f}M env steps, {stats['wall_clock_s'] / 60:.1f} min")
        draw_curves(family, logs, os.path.join(args.out, f"curves_{family}.png"))
        write_csv(os.path.join(args.out, f"curves_{family}.csv"),
                  [{"run": name, **{k: round(float(v[i]), 4) for k, v in log.items()}}
                   for name, log in logs.items() for i in range(len(log["env_steps"]))])
        numbers[family] = family_numbers
    if not numbers:
        say(f"curves: no training logs <env>.csv in {args.checkpoints}; skipping")
    return numbers


# --------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------

# Runs in a child process: mujoco picks its OpenGL backend (MUJOCO_GL) once, at import.
_RENDER_CHILD = """
import sys, numpy as np, mujoco, envs
family, source, target, width, height = sys.argv[1:6]
model = envs.load_model(family); data = mujoco.MjData(model)
renderer = mujoco.Renderer(model, int(height), int(width))
frames = []
for qpos in np.load(source):
    data.qpos[:] = qpos; mujoco.mj_forward(model, data)
    renderer.update_scene(data, camera="track"); frames.append(renderer.render().copy())
np.save(target, np.stack(frames))
"""


def render_frames(family: str, qpos: np.ndarray, width: int = 240, height: int = 180):
    """RGB frames (K, height, width, 3) of the states qpos (K, nq), or (None, why not)."""
    backends = [os.environ["MUJOCO_GL"]] if os.environ.get("MUJOCO_GL") else ["egl", "osmesa"]
    reason = "no backend tried"
    with tempfile.TemporaryDirectory() as tmp:
        source, target = os.path.join(tmp, "qpos.npy"), os.path.join(tmp, "frames.npy")
        np.save(source, qpos)
        for backend in backends:
            environment = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
            try:
                child = subprocess.run([sys.executable, "-c", _RENDER_CHILD, family, source, target, str(width), str(height)],
                                       cwd=HERE, env=environment, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                reason = f"MUJOCO_GL={backend} timed out"
                continue
            if child.returncode == 0 and os.path.isfile(target):
                return np.load(target), backend
            last = (child.stderr.strip().splitlines() or ["failed"])[-1]
            reason = f"MUJOCO_GL={backend}: {last[:120]}"
    return None, reason


def render(args) -> dict:
    """Filmstrip and GIF of a training LTE and an interpolated one.

    Filmstrip PNG and side-by-side GIF of the cheetah at a training LTE and at the
    nlerp midpoint of a pair, through mujoco.Renderer (headless: MUJOCO_GL=egl,
    then osmesa, tried in a child process); without OpenGL it says so and skips.
    """
    found = checkpoints(args, "render", ["halfcheetah-vel"])[:1]
    if not found:
        return {}
    family, policy = found[0]
    a_text, b_text = (args.pair or envs.FAMILIES[family].pairs or [(envs.task_label(policy.tasks[0]),) * 2])[0]
    try:
        ia, ib = task_index(policy, family, a_text), task_index(policy, family, b_text)
    except ValueError as error:
        _fail(f"render --pair: {error}")
    film = filmed_rollout(policy, family, ia, ib, args)
    if film["frames"] is None:
        say(f"render: no usable OpenGL backend ({film['backend']}); skipping the filmstrip and GIF")
        return {"skipped": film["backend"]}
    names, achieved, error_unit = film["names"], film["achieved"], envs.FAMILIES[family].error_unit
    numbers = {"backend": film["backend"], "unit": error_unit, "embeddings": {n: float(v) for n, v in zip(names, achieved)}}
    draw_filmstrip(family, film, os.path.join(args.out, f"render_{family}.png"))
    say(f"render {family}: {names[0]} gives {achieved[0]:.2f} {error_unit}, {names[1]} {achieved[1]:.2f} {error_unit}; "
        f"filmstrip via MUJOCO_GL={film['backend']}")
    if args.gif and len(film["gif_steps"]):
        try:
            import PIL  # noqa: F401  (PillowWriter needs it)
        except ImportError:
            say("render: pillow is not installed; skipping the GIF")
            return numbers
        numbers["gif_frames"] = write_gif(film, os.path.join(args.out, f"render_{family}.gif"))
    return numbers


def filmed_rollout(policy, family: str, ia: int, ib: int, args) -> dict:
    """One deterministic episode at training LTE ia and at the nlerp midpoint of ia and
    ib, rendered: the behaviour achieved, the filmstrip's steps (--frames every second
    step from mid-episode), the GIF's steps (every second step, with --gif) and the
    frames of both (None, with the reason in "backend", without OpenGL)."""
    E = policy.task_embeddings
    names = [f"training task {envs.task_label(policy.tasks[ia])}",
             f"nlerp({envs.task_label(policy.tasks[ia])}, {envs.task_label(policy.tasks[ib])}, 0.5)"]
    result, env = simulate(policy, family, [E[ia], nlerp(E[ia], E[ib], 0.5)], args, record=True)
    # Recorded observations drop the root x (and Ant y); integrate the velocity back.
    skip, nq = env.family.qpos_skip, env.model.nq
    velocity = result["velocity_steps"].reshape(len(result["obs"]), 2, skip)
    position = np.concatenate([np.zeros((1, 2, skip)), np.nancumsum(velocity, axis=0)[:-1] * env.dt])
    qpos = np.concatenate([position, result["obs"][..., : nq - skip]], axis=2)
    valid = np.isfinite(qpos).all(axis=(1, 2))
    gif_steps = np.flatnonzero(valid)[::2] if args.gif else np.array([], int)  # every 2nd step, 10 fps = real time
    start = len(valid) // 2
    strip = np.array([s for s in range(start, start + 2 * args.frames, 2) if s < len(valid) and valid[s]] or [0])
    wanted = np.union1d(gif_steps, strip)
    frames, backend = render_frames(family, qpos[wanted].transpose(1, 0, 2).reshape(-1, nq))
    return {"names": names, "achieved": env.behaviour(result), "dt": env.dt, "strip": strip, "gif_steps": gif_steps,
            "wanted": wanted, "backend": backend,
            "frames": None if frames is None else frames.reshape(2, len(wanted), *frames.shape[1:])}


def draw_filmstrip(family: str, film: dict, path: str) -> None:
    frames, strip, wanted, dt = film["frames"], film["strip"], film["wanted"], film["dt"]
    fig, axes = plt.subplots(2, len(strip), figsize=(1.6 * len(strip) + 0.5, 3.6), squeeze=False)
    for row in range(2):
        for col, step in enumerate(strip):
            ax = axes[row, col]
            ax.imshow(frames[row, np.searchsorted(wanted, step)])
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"t = {step * dt:.2f} s", fontsize=7)
        axes[row, 0].set_ylabel(f"{film['names'][row]}\n{film['achieved'][row]:.2f} {envs.FAMILIES[family].error_unit}",
                                fontsize=7)
    fig.suptitle(f"{envs.FAMILIES[family].title}: training LTE (top) and interpolated LTE (bottom), every {2 * dt:.2f} s")
    _save(fig, path)


def write_gif(film: dict, path: str) -> int:
    """Both episodes side by side at 10 frames per second; returns the frame count."""
    from matplotlib.animation import FuncAnimation, PillowWriter
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.6))
    images = []
    for k, ax in enumerate(axes):
        images.append(ax.imshow(film["frames"][k, 0]))
        ax.set_title(film["names"][k], fontsize=8)
        ax.axis("off")
    index = np.searchsorted(film["wanted"], film["gif_steps"])

    def update(i):
        for k, image in enumerate(images):
            image.set_data(film["frames"][k, index[i]])
        return images

    FuncAnimation(fig, update, frames=len(index)).save(path, writer=PillowWriter(fps=10), dpi=80)
    plt.close(fig)
    return int(len(index))


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

COMMANDS = {"evaluate": evaluate, "seeds": seeds, "interpolate": interpolate, "compose": compose,
            "sphere": sphere, "equivariance": equivariance, "curves": curves, "render": render}


def _at_least(kind, low=1):
    """argparse type: a number of `kind` no smaller than `low`, with a one-line message."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {low}")
        return value
    return parse


# (flags, argparse options, the subcommands that take them); "all" takes every one
OPTIONS = [
    (("--episodes",), dict(type=_at_least(int), default=10, help="episodes per task or embedding"),
     ("evaluate", "interpolate", "compose", "seeds")),
    (("--alphas",), dict(type=_at_least(int, 2), default=11, help="mixing weights in [0, 1]"),
     ("interpolate", "compose", "seeds")),
    (("--directions",), dict(type=_at_least(int, 4), default=400, help="lattice directions on the sphere"), ("sphere",)),
    (("--pair",), dict(nargs=2, action="append", metavar=("A", "B"), default=None,
                       help="training tasks at alpha = 0 and alpha = 1, e.g. --pair 3 4 (repeatable; default: a "
                            "neighbouring and a distant pair)%(default).0s"), ("interpolate", "render")),
    (("--run",), dict(default=None, help="run task, e.g. run:4 (default: the median run task)%(default).0s"),
     ("compose", "seeds")),
    (("--jump",), dict(default=None, help="jump task, e.g. jump:10 (default: the strongest)%(default).0s"),
     ("compose", "seeds")),
    (("--stand",), dict(default=None, help="stand task, if the checkpoint has one (default: the strongest)%(default).0s"),
     ("compose", "seeds")),
    (("--mix",), dict(type=float, default=0.5, help="nlerp weight of the second motion"), ("compose",)),
    (("--airborne-height",), dict(type=float, default=0.2, help="root height z (m) counted as airborne"),
     ("compose", "seeds")),
    (("--frames",), dict(type=_at_least(int), default=8, help="frames per filmstrip row"), ("render",)),
    (("--no-gif",), dict(dest="gif", action="store_false", default=True, help="filmstrip only%(default).0s"), ("render",)),
]


def takes(command: str, users) -> bool:
    """Whether subcommand `command` takes an OPTIONS entry used by `users`."""
    return command in users or command == "all"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """A subcommand's --help: its docstring as written, the options with their defaults."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + ",seeds,all}")
    for name in (*SUBCOMMANDS, "seeds", "all"):
        doc = inspect.getdoc(COMMANDS[name]) if name in COMMANDS else "Every subcommand but seeds, in order."
        p = sub.add_parser(name, help=doc.split("\n")[0].replace("%", "%%"), description=doc, formatter_class=_HelpFormatter)
        p.add_argument("--checkpoints", "--checkpoint-dir", dest="checkpoints", default=os.path.join(HERE, "checkpoints"),
                       help="folder of <env>.pt checkpoints and <env>.csv training logs")
        p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the figures, tables and summary.json")
        p.add_argument("--env", action="append", default=None, help="family to analyse (repeatable; default: every "
                       "family with a checkpoint)%(default).0s")
        p.add_argument("--seed", type=int, default=0, help="seed of the resets and of the stochastic actions")
        p.add_argument("--steps", type=_at_least(int, 4), default=envs.MAX_STEPS,
                       help="episode length in steps (200 as in training; smaller only for quick checks)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (all)%(default).0s")
        for flags, options, users in OPTIONS:  # each subcommand takes its own options; the rest keep their defaults
            if takes(name, users):
                p.add_argument(*flags, **options)
            else:
                p.set_defaults(**{options.get("dest", flags[0].lstrip("-").replace("-", "_")): options.get("default")})
        if name == "seeds":
            p.add_argument("--runs", nargs="+", default=[os.path.join("runs", "sweep")], metavar="FOLDER",
                           help="a sweep's folder (train.py --sweep ... --out OUT --name NAME: OUT/NAME), or several "
                                "folders whose runs are pooled (--out then defaults to the first)")
            p.add_argument("--reach", type=float, nargs="+", default=None, metavar="ERROR",
                           help="also report the wall-clock to the first evaluation at or below each error level")
            p.add_argument("--at-updates", type=_at_least(float), nargs="+", default=None, metavar="K",
                           help="also report each run's error after K thousand updates (mean of its last LAST evaluations)")
            p.add_argument("--reps", type=_at_least(int, 100), default=2000, help="bootstrap resamples")
            p.add_argument("--evaluate", action="store_true", help="also measure each run's saved policy afresh "
                           "(error, falls, interpolation R^2)%(default).0s")
            p.add_argument("--adapt-budget", type=_at_least(int, 0), default=45, metavar="EPISODES",
                           help="with --evaluate, also adapt each run's policy to the family's unseen test tasks "
                                "with this many search episodes (0: no adaptation)")
            p.add_argument("--last", type=_at_least(int), default=1,
                           help="final = the mean of each run's last LAST evaluations (2-episode evaluations are noisy)")
            p.set_defaults(out=None)  # the sweep's own folder
    return parser


def main(argv=None) -> None:
    torch.set_num_threads(1)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error(f"choose a subcommand: {', '.join(SUBCOMMANDS)}, seeds or all")
    if args.command == "seeds":
        for root in args.runs:
            if not os.path.isdir(root):
                parser.error(f"seeds: --runs {root} is not a folder; run a sweep first "
                             f"(`python train.py --sweep seed=0,1,2`) or pass --runs OUT/NAME")
        args.out = args.out or args.runs[0]
    if not 0.0 <= args.mix <= 1.0 or not math.isfinite(args.airborne_height):
        parser.error("--mix must lie in [0, 1] and --airborne-height be a finite number")
    if args.steps > envs.MAX_STEPS:
        parser.error(f"--steps {args.steps} is longer than an episode ({envs.MAX_STEPS} steps)")
    for family in args.env or []:
        try:
            envs.check_family(family)
        except ValueError as error:
            parser.error(str(error))
    if args.command != "seeds" and not os.path.isdir(args.checkpoints):
        parser.error(f"--checkpoints {args.checkpoints} is not a folder; train first (`python train.py`) or pass --checkpoints DIR")
    if not envs.writable_folder(args.out):
        parser.error(f"cannot write to --out {args.out}; pass a writable folder")
    names = SUBCOMMANDS if args.command == "all" else (args.command,)
    from tqdm import tqdm
    started = time.perf_counter()
    # disable=None: a bar on a terminal only, none in logs.
    bar = tqdm(names, disable=True if args.no_progress or len(names) == 1 else None, unit="analysis",
               file=sys.stderr, dynamic_ncols=True)
    for name in bar:
        bar.set_description(name)
        numbers = COMMANDS[name](args)
        if numbers:
            merge_summary(args.out, name, numbers)
    bar.close()
    say(f"{args.command}: done in {time.perf_counter() - started:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
