"""Lead time: how many steps before a loss spike gradwatch warns, and how often it cries wolf.

Usage::

    python benchmarks/spikes.py                          # every run (~50 trainings)
    python benchmarks/spikes.py --jobs 2 --json benchmarks/results/spikes.json
    python benchmarks/spikes.py --only ramp-0.3          # one group
    python benchmarks/spikes.py --save /tmp/spikes       # keep the runs ...
    python benchmarks/spikes.py --rescan /tmp/spikes     # ... and measure them again
    python benchmarks/spikes.py --combine a.json,b.json  # one table of several --json files

The runs train the small GPT of ``gradwatch.experiments.language_model`` (2 pre-LN blocks,
width 64, 4 heads, context 32) on the built-in copy language with AdamW, watched by
``gw.watch`` with its defaults (attention, logit and Adam statistics every 10th recorded step,
the loss and gradient norms every step). Two kinds of runs:

- **spikes** (``ramp-*``): the learning rate rises linearly over 300 steps to a peak that is
  too high, and stays there for 150 more; somewhere on the way the loss spikes. Seeds ×
  peaks, with and without qk-layernorm (with it, the attention logits stay bounded and the
  spikes come from elsewhere: no attention precursor to see);
- **stable** (``cosine-*``): the usual schedule (warmup over 10% of the steps, cosine decay)
  at learning rates that train, with and without qk-layernorm;
- **stable, standard architectures** (``zoo-*``): zoo cases that train (Hugging Face GPT-2
  and BERT from a config, a pre-LN ``nn.TransformerEncoder``, ResNet-18/50, VGG-16 with
  batch norm, LSTM, GRU, an MLP on the digits with Adam), trained as the zoo trains them
  (their optimizer, data and steps), seeds 0 and 1.

Ground truth, decided from the loss alone and independently of gradwatch's rules (it may
look ahead): a spike is the first step t at which the loss exceeds :data:`SPIKE_RISE` × the
median of the :data:`BASELINE` steps before it and the median of steps t..t+4 stays above
:data:`SPIKE_STAY` × that median (a jump that lasts, not one bad batch), or a non-finite loss.
A run with a spike stops :data:`AFTER` steps after it.

gradwatch's first warning is the first step s at which ``gw.diagnose`` on the run *truncated
at s* holds a finding of severity warning or error (any rule): what a user calling
``gw.diagnose(mon.run)`` during training would have seen. It is found by diagnosing the
truncated run every :data:`SCAN` steps, then step by step inside the window where it first
appears. Lead time = spike step - first warning (negative: the warning came after the spike).
A false warning is a warning or error in the diagnosis of a stable run (a cosine or zoo run
without a spike); a stable run warned on the way (on the run truncated at some step) but not
at its end is listed apart, and so is a ramp run that does not spike within its steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

SPIKE_RISE = 1.5
SPIKE_STAY = 1.25
BASELINE = 25
AFTER = 25
SCAN = 10
RAMP = 300  # steps of the linear rise of a ramp run
RAMP_STEPS = 450  # a ramp run's length: the peak is held for 150 steps

#: Stable runs of standard architectures: zoo cases whose training run trains (the zoo's
#: optimizer, learning rate, data and steps; seeds 0 and 1).
STANDARD = ("gpt2", "gpt2_lr_normal", "bert", "encoder_pre_ln_24", "resnet18", "resnet50",
            "vgg16_bn_he_init", "lstm_default", "gru_default", "setup_adam_digits")


@dataclass(frozen=True)
class Config:
    """One training run of the benchmark."""

    group: str
    lr: float
    qk_norm: bool
    seed: int
    decay: str  # "ramp" (linear rise over 300 steps, then constant), "cosine" or "zoo"
    steps: int = 300
    case: str = ""  # "zoo": the zoo case trained, as the zoo trains it

    @property
    def name(self) -> str:
        return f"{self.group}-s{self.seed}"


def configs() -> list[Config]:
    """Every run: spikes (ramps to a high peak) and stable runs (cosine, lrs that train)."""
    out = []
    for lr in (0.2, 0.3, 0.5):
        out += [Config(f"ramp-{lr:g}", lr, False, s, "ramp", RAMP_STEPS) for s in range(4)]
    out += [Config("ramp-0.5-qkln", 0.5, True, s, "ramp", RAMP_STEPS) for s in range(3)]
    for lr, qk in ((0.01, False), (0.03, False), (0.1, False), (0.03, True), (0.1, True)):
        tag = f"cosine-{lr:g}" + ("-qkln" if qk else "")
        out += [Config(tag, lr, qk, s, "cosine") for s in range(3)]
    for name in STANDARD:
        out += [Config(f"zoo-{name}", math.nan, False, s, "zoo", 0, name) for s in range(2)]
    return out


def spike_truth(losses: list[float]) -> int | None:
    """The ground-truth spike step (see the module docstring), or None."""
    for t, v in enumerate(losses):
        if not math.isfinite(v):
            return t
        if t < 10:
            continue
        base = statistics.median(losses[max(0, t - BASELINE) : t])
        after = [x if math.isfinite(x) else math.inf for x in losses[t : t + 5]]
        if v > SPIKE_RISE * base and statistics.median(after) > SPIKE_STAY * base:
            return t
    return None


def first_warning(run) -> tuple[int | None, str | None]:
    """(first step whose truncated run gradwatch warns on, the finding's kind)."""
    from gradwatch.diagnose import diagnose
    from gradwatch.store.reader import Run

    steps = sorted(int(s) for s in run.stats["step"].unique())

    def warns(step: int) -> str | None:
        part = Run(meta=run.meta, stats=run.stats[run.stats["step"] <= step], path=None)
        bad = [f for f in diagnose(part) if f.severity in ("warning", "error")]
        return bad[0].kind if bad else None

    prev = None
    for step in steps[::SCAN] + [steps[-1]]:
        if warns(step) is not None:
            lo = steps.index(prev) + 1 if prev is not None else 0
            for s in steps[lo : steps.index(step) + 1]:
                kind = warns(s)
                if kind is not None:
                    return s, kind
        prev = step
    return None, None


def run_one(cfg: Config, save: str | None = None) -> dict:
    """Train one run (watched with gradwatch's defaults); measure truth and warnings.

    ``save``: a folder to keep the run in (``<save>/<name>``), for :func:`rescan`.
    """
    import torch

    from gradwatch.experiments.language_model import Schedule, TinyGPT, train_lm, training_data

    torch.set_num_threads(1)
    if cfg.case:
        return run_zoo(cfg, Path(save) / cfg.name if save else None)
    torch.manual_seed(cfg.seed)
    model = TinyGPT(qk_norm=cfg.qk_norm)
    warm = RAMP if cfg.decay == "ramp" else cfg.steps // 10
    schedule = Schedule(lr=cfg.lr, steps=cfg.steps, warmup=warm,
                        decay="constant" if cfg.decay == "ramp" else "cosine")
    data = training_data(4096, 32, 64)
    losses: list[float] = []
    stop: list[int] = []

    def on_step(step: int, loss: float) -> bool:
        losses.append(loss)
        if not stop and len(losses) > 5:
            t = spike_truth(losses[:-4])
            if t is not None:
                stop.append(t + AFTER)
        return bool(stop) and step >= stop[0]

    t0 = time.perf_counter()
    run_dir = Path(save) / cfg.name if save else None
    out = train_lm(model, schedule, data, cfg.seed, run_dir, watch={"diagnose": False},
                   on_step=on_step)
    return measure(cfg, out["run"], losses, time.perf_counter() - t0)


def run_zoo(cfg: Config, run_dir: Path | None) -> dict:
    """Train the zoo case ``cfg.case`` with seed ``cfg.seed`` as the zoo trains it."""
    import dataclasses

    import torch

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.zoo import BY_NAME
    from benchmarks.zoo.run import train_run

    torch.set_flush_denormal(True)
    case = dataclasses.replace(BY_NAME[cfg.case], seed=cfg.seed)
    t0 = time.perf_counter()
    run, losses = train_run(case, run_dir)
    return measure(cfg, run, losses, time.perf_counter() - t0)


def measure(cfg: Config, mon_run, losses: list[float], train_s: float) -> dict:
    """The row of one run: the spike's step, the first warning, the lead time, the findings."""
    from gradwatch.diagnose import diagnose

    truth = spike_truth(losses)
    t1 = time.perf_counter()
    warn_step, warn_kind = first_warning(mon_run)
    full = [f for f in diagnose(mon_run) if f.severity in ("warning", "error")]
    return {
        **asdict(cfg), "name": cfg.name, "steps_run": len(losses), "spike_step": truth,
        "first_warning": warn_step, "warning_kind": warn_kind,
        "lead_time": (truth - warn_step) if truth is not None and warn_step is not None
        else None,
        "findings": sorted({f"{f.kind}:{f.severity}" for f in full}),
        "loss_end": float(statistics.fmean(losses[-10:])) if losses else math.nan,
        "train_s": round(train_s, 1), "scan_s": round(time.perf_counter() - t1, 1),
    }


def rescan(cfg: Config, folder: str) -> dict | None:
    """The row of a run saved by ``--save``, measured again without training (the rules may
    have changed since); None if the folder holds no finished run of that name."""
    import gradwatch as gw

    if not (Path(folder) / cfg.name).is_dir():
        return None
    run = gw.load(Path(folder) / cfg.name)
    if run.meta.get("status") != "closed":
        return None  # still running, or stopped before its end: not measured
    return measure(cfg, run, [float(v) for v in run.loss()], math.nan)


def _worker(job: tuple[Config, str | None, bool]) -> dict | None:
    cfg, folder, again = job
    return rescan(cfg, folder) if again else run_one(cfg, folder)


def summary(rows: list[dict]) -> dict:
    """Spikes reproduced, lead times, misses and false warnings.

    Stable runs are the cosine and zoo runs without a spike; a ramp run that did not spike
    within its steps is counted apart (its warnings are not false by construction, nor
    confirmed).
    """
    spikes = [r for r in rows if r["spike_step"] is not None]
    stable = [r for r in rows if r["spike_step"] is None and r["decay"] != "ramp"]
    unresolved = [r for r in rows if r["spike_step"] is None and r["decay"] == "ramp"]
    leads = [r["lead_time"] for r in spikes if r["lead_time"] is not None]
    warned_before = [x for x in leads if x >= 0]
    plain = [r["lead_time"] for r in spikes if r["lead_time"] is not None and not r["qk_norm"]]
    false = [r["name"] for r in stable if r["findings"]]
    passing = [f"{r['name']} ({r['warning_kind']} at step {r['first_warning']})"
               for r in stable if r["first_warning"] is not None and not r["findings"]]
    return {
        "spikes": len(spikes),
        "stable_runs": len(stable),
        "ramp_runs_without_spike": [r["name"] for r in unresolved],
        "ramp_runs_without_spike_warned": [r["name"] for r in unresolved if r["findings"]],
        "median_lead_time": statistics.median(leads) if leads else None,
        "median_lead_time_of_attention_precursors": statistics.median(plain) if plain else None,
        "warned_before_or_at_spike": len(warned_before),
        "missed": len(spikes) - len(warned_before),
        "false_warnings": len(false),
        "false_warning_runs": false,
        "stable_runs_warned_only_on_the_way": passing,
    }


def render(rows: list[dict], summ: dict) -> str:
    """The per-run table and the summary lines."""
    head = (f"{'run':<22} {'lr':>5} {'qk-LN':>5} {'spike':>6} {'warned':>7} {'lead':>5}  "
            f"{'first warning':<24} loss end")
    lines = [head, "-" * len(head)]
    for r in rows:
        def cell(v):
            return "-" if v is None else str(v)
        lines.append(
            f"{r['name']:<22} {r['lr']:>5g} {'yes' if r['qk_norm'] else 'no':>5} "
            f"{cell(r['spike_step']):>6} {cell(r['first_warning']):>7} "
            f"{cell(r['lead_time']):>5}  {cell(r['warning_kind']):<24} {r['loss_end']:.3g}"
        )
    lines += [
        "",
        f"spikes reproduced: {summ['spikes']}; stable runs (cosine and zoo, no spike): "
        f"{summ['stable_runs']}; ramp runs without a spike: "
        f"{len(summ['ramp_runs_without_spike'])} (warned on "
        f"{len(summ['ramp_runs_without_spike_warned'])})",
        f"median lead time: {summ['median_lead_time']} steps "
        f"(without qk-layernorm: {summ['median_lead_time_of_attention_precursors']}); "
        f"warned at or before the spike: {summ['warned_before_or_at_spike']}/{summ['spikes']}",
        f"false warnings on stable runs: {summ['false_warnings']}/{summ['stable_runs']}"
        + (f" ({', '.join(summ['false_warning_runs'])})" if summ["false_warning_runs"] else ""),
        f"stable runs warned on the way but not at their end: "
        f"{len(summ['stable_runs_warned_only_on_the_way'])}"
        + (f" ({', '.join(summ['stable_runs_warned_only_on_the_way'])})"
           if summ["stable_runs_warned_only_on_the_way"] else ""),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", default="", help="comma-separated group names")
    ap.add_argument("--json", default=None, help="write the rows and the summary here")
    ap.add_argument("--save", default=None, help="keep every run in this folder")
    ap.add_argument("--rescan", default=None,
                    help="measure the runs kept by --save in this folder again, untrained")
    ap.add_argument("--combine", default=None,
                    help="comma-separated --json files of earlier runs: one table of their rows")
    args = ap.parse_args(argv)
    if args.combine:
        rows = [r for f in args.combine.split(",")
                for r in json.loads(Path(f).read_text())["runs"]]
        order = {c.name: i for i, c in enumerate(configs())}
        rows.sort(key=lambda r: order.get(r["name"], len(order)))
        summ = summary(rows)
        print(render(rows, summ))
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"meta": {"combined": args.combine.split(",")}, "summary": summ,
                 "runs": rows}, indent=1))
        return 0
    cfgs = configs()
    if args.only:
        wanted = {g.strip() for g in args.only.split(",")}
        cfgs = [c for c in cfgs if c.group in wanted]
    t0 = time.perf_counter()
    jobs = [(c, args.rescan or args.save, bool(args.rescan)) for c in cfgs]
    if args.jobs <= 1:
        rows = [_worker(j) for j in jobs]
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            rows = list(pool.map(_worker, jobs))
    missing = [c.name for c, row in zip(cfgs, rows, strict=True) if row is None]
    rows = [r for r in rows if r is not None]
    if missing:
        print(f"not in {args.rescan}, or not finished: {', '.join(missing)}\n")
    summ = summary(rows)
    print(render(rows, summ))
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s ({args.jobs} jobs)")
    if args.json:
        import torch

        meta = {"torch": torch.__version__, "jobs": args.jobs, "date": time.strftime("%F %T"),
                "wall_s": round(time.perf_counter() - t0, 1), "load": os.getloadavg()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "summary": summ, "runs": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
