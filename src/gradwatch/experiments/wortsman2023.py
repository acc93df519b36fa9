"""Wortsman et al. (2023): attention logit growth, and qk-layernorm widening the lr range.

Paper: M. Wortsman, P. J. Liu, L. Xiao, K. Everett, A. Alemi, B. Adlam, J. D. Co-Reyes,
I. Gur, A. Kumar, R. Novak, J. Pennington, J. Sohl-Dickstein, K. Xu, J. Lee, J. Gilmer and
S. Kornblith, "Small-scale proxies for large-scale Transformer training instabilities",
ICLR 2024 (arXiv 2309.14322, 2023).

The paper reproduces, in small transformers trained at high learning rates, two
instabilities of large ones: *attention logit growth* -- the logits q·kᵀ/√d of some layers
grow by orders of magnitude, the attention collapses onto single keys and the loss diverges;
qk-layernorm (LayerNorm on the queries and keys) prevents it -- and *output-logit
divergence*, which z-loss prevents. Its lr-sensitivity figure (final loss against learning
rate, with and without qk-layernorm) shows the range of learning rates that train widening
with qk-layernorm.

Setup here: the small GPT of :mod:`gradwatch.experiments.language_model` (2 pre-LN blocks,
width 64, 4 heads, context 32, vocabulary 64) on the built-in copy language
(:func:`gradwatch.experiments.data.copy_language`), AdamW (β = 0.9, 0.95; ε = 1e-8; no
weight decay), a linear warmup over the first 10% of the steps and a cosine decay to 0, batch
16, at each learning rate of a sweep, for three arms -- the baseline, qk-layernorm
(:func:`gradwatch.remedies.qk_layernorm_`) and qk-layernorm with z-loss (1e-4,
:func:`gradwatch.remedies.z_loss`) -- over the seeds of the run (``--seeds``, 3 in full mode,
1 in quick mode: the seeds of the initialisation and the batch order; each claim is judged
in each seed and must hold in every one). Every run is
watched by ``gw.watch``: ``attn_logit_max`` at detail steps gives the attention logits.

Expected (and checked, over the seeds):

1. without qk-layernorm, attention logits grow: at the largest learning rate of the sweep
   the baseline's largest attention logit passes :data:`LOGITS_GROW` (the threshold of
   gradwatch's ``attention_logit_growth`` rule), and is ≥ :data:`LOGIT_RATIO` × the
   qk-layernorm model's, on every seed;
2. without qk-layernorm, training fails above some learning rate: there is a learning rate
   at which the baseline fails (its final loss ≥ :data:`FAILS_FACTOR` times its seed's best
   run's) while the qk-layernorm model trains (below that), on every seed;
3. with qk-layernorm the range of learning rates that trains is wider: on every seed it
   trains at every learning rate where the baseline trains and at one more at least, and
   its lr sensitivity (the paper's metric, mean over the sweep of
   ``min(final loss, initial loss) - best``) is lower;
4. gradwatch warns: ``gw.diagnose`` flags ``attention_logit_growth`` in every baseline run
   that fails, and no qk-layernorm run that trains.

Figures (``figures/``): ``lr_sensitivity`` (final loss against learning rate, one line per
arm, mean over seeds, each seed a dot; log x: the paper's Figure 1 in miniature) and
``attention_logits`` (the largest attention logit over the steps, log y, one line per seed,
at the largest learning rate where the baseline fails and qk-layernorm trains: the
baseline's grow by orders of magnitude, qk-layernorm's stay within one).

Run: ``gradwatch experiment wortsman2023 [--quick]``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradwatch.experiments import base, runner
from gradwatch.experiments.base import Claim, claim
from gradwatch.jsonable import from_jsonable

NAME = "wortsman2023"
ARMS = ("baseline", "qk-layernorm", "qk-layernorm + z-loss")


@dataclass(frozen=True)
class Config:
    """Settings of the experiment (full mode); :data:`QUICK` is the quick one."""

    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
    arms: tuple[str, ...] = ARMS
    steps: int = 300
    warmup_frac: float = 0.1
    batch: int = 16
    vocab: int = 64
    length: int = 32
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    z_loss: float = 1e-4
    data_size: int = 4096
    detail_every: int = 5
    processes: int = 2  # local worker processes


QUICK = Config(lrs=(1e-2, 0.1, 0.3, 1.0), arms=ARMS[:2], steps=150)


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """One training run of the sweep (a module-level function: it runs in a worker)."""
    from gradwatch.experiments import gw
    from gradwatch.experiments.language_model import Schedule, TinyGPT, train_lm, training_data

    cfg: Config = job["cfg"]
    with base.seeded(job["seed"], threads=job.get("threads", 1)):
        model = TinyGPT(cfg.vocab, cfg.length, cfg.d_model, cfg.layers, cfg.heads,
                        qk_norm=job["arm"] != "baseline")
        schedule = Schedule(
            lr=job["lr"], steps=cfg.steps, warmup=max(1, round(cfg.warmup_frac * cfg.steps)),
            decay="cosine", batch=cfg.batch,
            z_loss=cfg.z_loss if job["arm"].endswith("z-loss") else 0.0,
        )
        data = training_data(cfg.data_size, cfg.length, cfg.vocab)
        out = train_lm(model, schedule, data, job["seed"], job["run_dir"],
                       watch={"detail_every": cfg.detail_every, "config": job["info"],
                              "diagnose": False})
    losses = out["losses"]
    tail = max(1, len(losses) // 10)
    final = float(np.mean(losses[-tail:])) if out["finite"] else math.inf
    run = gw.load(job["run_dir"])
    attn = run.pivot("attn_logit_max")
    top = attn.max(axis=1) if not attn.empty else None
    lse = run.pivot("logsumexp_mean")
    findings = gw.diagnose(run)
    return {
        "final_loss": final,
        "initial_loss": float(np.mean(losses[: min(5, len(losses))])),
        "finite": out["finite"],
        "steps_run": len(losses),
        "attn_steps": [int(s) for s in top.index] if top is not None else [],
        "attn_max": [float(v) for v in top.to_numpy()] if top is not None else [],
        "attn_logit_max": float(top.max()) if top is not None and len(top) else math.nan,
        "logsumexp_last": float(lse.iloc[-1].iloc[0]) if not lse.empty else math.nan,
        "flagged": sorted({f.kind for f in findings if f.severity in ("warning", "error")}),
    }


def run(
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    seeds: int | None = None,
    threads: int = 1,
    executor: str = "local",
    progress: bool | None = None,
    **overrides: Any,
) -> dict:
    """Run the experiment; write seed-<s>/ (runs/, result.json), figures/ and result.json.

    Args:
        out_dir: output folder.
        quick: the small version (:data:`QUICK`: four learning rates, two arms, 150 steps).
        seed: the first seed (of the initialisation and the batch order).
        seeds: how many seeds: ``seed``, ``seed + 1``, …; None: 3 in full mode, 1 in quick.
        threads: torch intra-op threads of each training.
        executor: "local" (a pool of ``min(cpu_count, processes)`` workers) or "ray".
        progress: show a progress bar (None: when on a terminal).
        **overrides: fields of :class:`Config` to change.

    Returns:
        the result dict (see :func:`gradwatch.experiments.runner.combine`).
    """
    return runner.execute(
        NAME, measure, claims, plot, Config(), QUICK, out_dir, quick=quick, seed=seed,
        seeds=seeds, threads=threads, progress=progress, overrides=overrides,
        options={"executor": executor, "threads": threads},
        seed_torch=False,  # every training seeds itself, in whichever worker runs it
    )


def lr_key(lr: float) -> str:
    """The learning rate as a record key ("0.003")."""
    return f"{lr:g}"


def measure(cfg: Config, out: Path, seed: int, bar: Any, executor: str = "local",
            threads: int = 1) -> dict:
    """Train every (arm, lr) of the sweep with one seed; return the numbers."""
    seeds = [seed]
    jobs = []
    for arm in cfg.arms:
        for lr in cfg.lrs:
            for s in seeds:
                name = f"{arm.replace(' + ', '+').replace(' ', '')}-lr{lr_key(lr)}-s{s}"
                jobs.append({
                    "cfg": cfg, "arm": arm, "lr": lr, "seed": s, "threads": threads,
                    "run_dir": str(out / base.RUNS / name),
                    "info": {"experiment": NAME, "arm": arm, "lr": lr, "seed": s},
                })
    processes = max(1, min(os.cpu_count() or 1, cfg.processes))
    bar.total(len(jobs))
    bar.note(f"{NAME}: {len(jobs)} trainings ({processes} workers)")
    results = base.run_grid(train_one, jobs, executor=executor, processes=processes)
    bar.advance(len(jobs))
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for job, res in zip(jobs, results, strict=True):
        runs.setdefault(job["arm"], {}).setdefault(lr_key(job["lr"]), {})[str(job["seed"])] = res
    return {"lrs": [lr_key(lr) for lr in cfg.lrs], "seeds": [str(s) for s in seeds],
            "arms": list(cfg.arms), "steps": cfg.steps, "chance_loss": math.log(cfg.vocab),
            "runs": runs}


# Thresholds of the claims.
LOGITS_GROW = 100.0  # gradwatch's ATTN_LOGIT_HIGH: the baseline's logits pass it
LOGIT_RATIO = 10.0  # ...and are this many times qk-layernorm's at the same learning rate
FAILS_FACTOR = 2.0  # a run fails when its final loss is this many times its seed's best run's


def _table(numbers: dict[str, Any], arm: str, key: str) -> dict[str, dict[str, float]]:
    """{seed: {lr: value}} of one arm."""
    out: dict[str, dict[str, float]] = {}
    for lr, per_seed in numbers["runs"].get(arm, {}).items():
        for s, r in per_seed.items():
            out.setdefault(s, {})[lr] = r.get(key, math.nan)
    return out


def trains(numbers: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """{arm: {seed: [learning rates that train]}}.

    A run trains when its final loss is below :data:`FAILS_FACTOR` times its seed's best run's
    (over every arm and learning rate).
    """
    arms = numbers["arms"]
    finals = {arm: _table(numbers, arm, "final_loss") for arm in arms}
    out: dict[str, dict[str, list[str]]] = {arm: {} for arm in arms}
    for s in numbers["seeds"]:
        best = min((v for arm in arms for v in finals[arm].get(s, {}).values()),
                   default=math.inf)
        bar = FAILS_FACTOR * best
        for arm in arms:
            per = finals[arm].get(s, {})
            out[arm][s] = [lr for lr in numbers["lrs"] if per.get(lr, math.inf) < bar]
    return out


def lr_sensitivity(numbers: dict[str, Any], arm: str, seed: str) -> float:
    """Wortsman et al.'s lr sensitivity: mean over lrs of min(final, initial) - best."""
    arms = numbers["arms"]
    finals = {a: _table(numbers, a, "final_loss").get(seed, {}) for a in arms}
    inits = _table(numbers, arm, "initial_loss").get(seed, {})
    best = min((v for a in arms for v in finals[a].values()), default=math.nan)
    vals = [min(finals[arm].get(lr, math.inf), inits.get(lr, math.inf)) - best
            for lr in numbers["lrs"]]
    return float(np.mean(vals)) if vals else math.nan


def _each(seeds: list[str]) -> str:
    """", in each of the 3 seeds" when one record holds several seeds; "" for one."""
    return f", in each of the {len(seeds)} seeds" if len(seeds) > 1 else ""


def merged(seed_runs: list[Any]) -> dict[str, Any]:
    """One numbers dict of several seeds' numbers (their runs side by side, by seed)."""
    first = from_jsonable(seed_runs[0].numbers)
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for r in seed_runs:
        for arm, per_lr in from_jsonable(r.numbers)["runs"].items():
            for lr, per_seed in per_lr.items():
                runs.setdefault(arm, {}).setdefault(lr, {}).update(per_seed)
    seeds = [s for r in seed_runs for s in from_jsonable(r.numbers)["seeds"]]
    return {**first, "seeds": seeds, "runs": runs}


def claims(numbers: dict[str, Any]) -> list[Claim]:
    """The paper's claims over the seeds, computed from the measured numbers (pure).

    Args:
        numbers: ``result["numbers"]``: {"lrs", "seeds", "arms", "steps", "chance_loss",
            "runs": {arm: {lr:
            {seed: {"final_loss", "initial_loss", "attn_logit_max", "flagged", ...}}}}}.

    Returns:
        the claims, each with its evidence.
    """
    numbers = from_jsonable(numbers)
    seeds, lrs = numbers["seeds"], numbers["lrs"]
    base_arm, qk = "baseline", "qk-layernorm"
    top = lrs[-1] if lrs else None
    logit_b = _table(numbers, base_arm, "attn_logit_max")
    logit_q = _table(numbers, qk, "attn_logit_max")
    at_top = {s: (logit_b.get(s, {}).get(top, math.nan), logit_q.get(s, {}).get(top, math.nan))
              for s in seeds}
    out = [
        claim(
            f"Without qk-layernorm the attention logits grow: at the largest learning rate "
            f"({top}) the baseline's largest attention logit passes {LOGITS_GROW:g} and is "
            f"≥ {LOGIT_RATIO:g}× the qk-layernorm model's{_each(seeds)}",
            bool(seeds) and all(b > LOGITS_GROW and b >= LOGIT_RATIO * q
                                for b, q in at_top.values()),
            largest_logit_baseline={s: v[0] for s, v in at_top.items()},
            largest_logit_qk_layernorm={s: v[1] for s, v in at_top.items()},
            threshold=LOGITS_GROW, ratio=LOGIT_RATIO,
        )
    ]
    ok = trains(numbers)
    fails_b_trains_q = {
        s: [lr for lr in lrs if lr not in ok[base_arm].get(s, []) and lr in ok[qk].get(s, [])]
        for s in seeds
    }
    out.append(
        claim(
            f"Without qk-layernorm training fails above some learning rate: there is a learning "
            f"rate at which the baseline's final loss is ≥ {FAILS_FACTOR:g}× its seed's best "
            f"run's while qk-layernorm's is below that{_each(seeds)}",
            bool(seeds) and all(fails_b_trains_q[s] for s in seeds),
            lrs_baseline_fails_qk_trains=fails_b_trains_q,
            final_loss_baseline=_table(numbers, base_arm, "final_loss"),
            final_loss_qk_layernorm=_table(numbers, qk, "final_loss"),
            factor=FAILS_FACTOR,
        )
    )
    sens = {arm: {s: lr_sensitivity(numbers, arm, s) for s in seeds} for arm in (base_arm, qk)}
    wider = {
        s: set(ok[base_arm].get(s, [])) <= set(ok[qk].get(s, []))
        and len(ok[qk].get(s, [])) > len(ok[base_arm].get(s, []))
        for s in seeds
    }
    out.append(
        claim(
            "With qk-layernorm the range of learning rates that trains is wider: it trains "
            "wherever the baseline does and at one learning rate more at least, and its lr "
            "sensitivity (mean over the sweep of min(final, initial loss) - best) is lower"
            f"{_each(seeds)}",
            bool(seeds) and all(wider.values())
            and all(sens[qk][s] < sens[base_arm][s] for s in seeds),
            lrs_that_train={arm: ok[arm] for arm in (base_arm, qk)},
            lr_sensitivity=sens,
        )
    )
    flagged_fail = {
        f"{lr}/{s}": "attention_logit_growth" in numbers["runs"][base_arm][lr][s]["flagged"]
        for lr in lrs for s in seeds if lr not in ok[base_arm].get(s, [])
    }
    flagged_ok = {
        f"{lr}/{s}": numbers["runs"][qk][lr][s]["flagged"]
        for lr in lrs for s in seeds if lr in ok[qk].get(s, [])
    }
    trained_but_flagged = {  # reported, not judged: logits that grew in a run that trained
        f"{lr}/{s}": numbers["runs"][base_arm][lr][s]["flagged"]
        for lr in lrs for s in seeds if lr in ok[base_arm].get(s, [])
        and "attention_logit_growth" in numbers["runs"][base_arm][lr][s]["flagged"]
    }
    out.append(
        claim(
            "gw.diagnose flags attention_logit_growth in every baseline run that fails, and "
            "no attention_logit_growth in any qk-layernorm run that trains",
            bool(flagged_fail) and all(flagged_fail.values())
            and not any("attention_logit_growth" in v for v in flagged_ok.values()),
            baseline_failed_flagged=flagged_fail,
            qk_layernorm_trained_flags=flagged_ok,
            baseline_trained_but_flagged=trained_but_flagged,
        )
    )
    return out


def plot(out: Path, seed_runs: list[Any], cfg: Config) -> list[Path]:
    """Draw the two figures from every seed's numbers; return their paths."""
    numbers = merged(seed_runs)
    paths: list[Path] = []
    lrs, chance = numbers["lrs"], numbers.get("chance_loss", math.log(cfg.vocab))
    x = [float(lr) for lr in lrs]
    top = 1.25 * chance  # losses above are drawn at the top edge (failed runs)
    fig, ax = base.new_figure(1, 1, (5.6, 3.6))
    for j, arm in enumerate(numbers["arms"]):
        table = _table(numbers, arm, "final_loss")
        per = np.array([[table[s].get(lr, math.nan) for lr in lrs] for s in table])
        per = np.where(np.isfinite(per), np.minimum(per, top), top)
        for row in per:
            ax.plot(x, row, "o", ms=3, alpha=0.5, color=f"C{j}")
        ax.plot(x, per.mean(axis=0), "-", color=f"C{j}", label=arm)
    ax.axhline(chance, color="grey", ls=":", label="chance (ln V)")
    ax.set_xscale("log")
    ax.set(title="Final loss against learning rate", xlabel="peak learning rate",
           ylabel="final training loss", ylim=(0, top * 1.02))
    ax.legend(fontsize=7)
    paths += base.save_figure(fig, out, "lr_sensitivity")

    ok = trains(numbers)
    qk = "qk-layernorm"
    both = [lr for lr in lrs if all(lr in v for v in ok.get(qk, {}).values())
            and not any(lr in v for v in ok.get("baseline", {}).values())]
    at = both[-1] if both else lrs[-1]
    fig, ax = base.new_figure(1, 1, (5.6, 3.4))
    for j, arm in enumerate(numbers["arms"][:2]):
        for k, r in enumerate(numbers["runs"][arm][at].values()):
            if r["attn_steps"]:
                ax.semilogy(r["attn_steps"], np.maximum(r["attn_max"], 1e-3), color=f"C{j}",
                            alpha=0.8, label=arm if k == 0 else None)
    ax.axhline(LOGITS_GROW, color="grey", ls=":", label="gradwatch's threshold")
    ax.set(title=f"Largest attention logit over training, lr {at}", xlabel="step",
           ylabel="max q·kᵀ/√d")
    ax.legend(fontsize=7)
    paths += base.save_figure(fig, out, "attention_logits")
    return paths
