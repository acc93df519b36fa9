"""The demo: watch a deep sigmoid net fail to learn, diagnose it, fix it, watch it learn.

On scikit-learn's digits (bundled, no download): a deep sigmoid MLP with Glorot & Bengio's
"standard" initialisation U[-1/sqrt(n), 1/sqrt(n)] trains while gradwatch watches it; the
diagnosis says its back-propagated gradient vanishes toward the input; ``gw.fix`` changes a
copy of the model until a one-batch check says healthy; the fixed copy trains the same way
(same data, same order, same optimizer); both runs and a before/after report are written.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from gradwatch.check import check
from gradwatch.errors import GradwatchValueError
from gradwatch.monitor import watch
from gradwatch.remedies.fix import fix
from gradwatch.report.remedy_text import describe_remedy
from gradwatch.report.summary import FINAL_LOSS_TEXT, final_loss, first_loss, format_loss
from gradwatch.store import Run, load


@dataclass
class DemoConfig:
    """Settings of the demo (the defaults take about two minutes of CPU time on 2 cores)."""

    depth: int = 16  # hidden sigmoid layers
    width: int = 64
    steps: int = 400
    batch: int = 32
    lr: float = 1e-3  # Adam
    seed: int = 0
    eval_every: int = 10  # steps between two measurements of the test accuracy

    def check(self) -> DemoConfig:
        """Check the sizes up front, against :data:`LIMITS` and :data:`MAX_PARAMETERS`.

        A demo that cannot run must say so at once: a width of a billion fails in the
        allocator, a depth of a billion grows memory for minutes before it dies.

        Raises:
            GradwatchValueError: naming the setting and its limit.
        """
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise GradwatchValueError(f"{name} must be a whole number, got {value!r}")
            if not low <= value <= high:
                raise GradwatchValueError(
                    f"{name} must be between {low} and {high:,} for the demo, got {value:,}"
                )
        n = 64 * self.width + (self.depth - 1) * self.width**2 + 10 * self.width
        if n > MAX_PARAMETERS:
            raise GradwatchValueError(
                f"depth {self.depth} and width {self.width} make a model of {n:,} weights, more "
                f"than the demo's {MAX_PARAMETERS:,}; lower depth or width (the default "
                "16 x 64 shows the problem)"
            )
        return self


#: The demo's settings: (least, most). Past the most the demo would run for days or take
#: more memory than a laptop has; its point shows at the defaults.
LIMITS = {"depth": (2, 1000), "width": (1, 4096), "steps": (1, 100_000)}
#: Most weights the demo's model may have (about 80 MB of float32, before gradients).
MAX_PARAMETERS = 20_000_000


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised digits, split 80/20 (train x, train y, test x, test y)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = int(0.8 * len(x))
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = (x - mean) / std
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def sigmoid_mlp(depth: int, width: int, seed: int) -> nn.Sequential:
    """A deep sigmoid MLP with Glorot & Bengio's "standard" init (biases 0)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(64, width), nn.Sigmoid()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    layers.append(nn.Linear(width, 10))
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            bound = 1 / math.sqrt(m.in_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train(was_training)
    return acc


def train(model: nn.Module, data, cfg: DemoConfig, run_dir: Path, progress, label: str) -> dict:
    """Train with Adam on the same batches every time, watched; return losses and accuracy.

    The test accuracy is measured after the first step and after every ``cfg.eval_every``-th
    step (and the last), at the step numbers the Monitor records (0 is the first step). The
    losses are the report's (:mod:`gradwatch.report.summary`): the first step's training loss,
    and the final loss, the mean training loss of the last 20 steps.
    """
    xtr, ytr, xte, yte = data
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    order = torch.Generator().manual_seed(cfg.seed + 1)
    task = progress.add_task(label, total=cfg.steps)
    acc_steps, acc_values = [], []
    with watch(model, run_dir, optimizer=opt, overwrite=True, name=label,
                  config={"demo": asdict(cfg)}) as mon:
        for step in range(cfg.steps):
            idx = torch.randint(0, len(xtr), (cfg.batch,), generator=order)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            mon.step(loss)
            if step % cfg.eval_every == 0 or step == cfg.steps - 1:
                acc_steps.append(step)
                acc_values.append(accuracy(model, xte, yte))
            progress.advance(task)
    run = load(run_dir)
    return {"first_loss": first_loss(run), "final_loss": final_loss(run),
            "test_accuracy": acc_values[-1],
            "accuracy_curve": {"steps": acc_steps, "test_accuracy": acc_values}}


def run_demo(out: str | Path = "runs/demo", cfg: DemoConfig | None = None,
             console: Console | None = None) -> dict[str, Any]:
    """Run the demo; write runs and reports under ``out``; return the numbers.

    Returns:
        dict with verdict_before, verdict_after, applied remedies, the training results of both
        models, and the paths written.
    """
    cfg = cfg or DemoConfig()
    # The vanishing net's gradients (and Adam's second moments of them) fall into the
    # subnormal range, where CPU arithmetic is ~100x slower; flushing them to zero changes
    # nothing visible and keeps the demo at about two minutes.
    torch.set_flush_denormal(True)
    try:
        return _run_demo(out, cfg, console)
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default (there is no getter)


def _run_demo(out: str | Path, cfg: DemoConfig, console: Console | None) -> dict[str, Any]:
    cfg.check()
    console = console or Console()
    out = Path(out)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = digits(cfg.seed)
    xtr, ytr = data[0], data[1]
    probe_x, probe_y = xtr[:256], ytr[:256]
    model = sigmoid_mlp(cfg.depth, cfg.width, cfg.seed)

    from gradwatch.report.terminal import print_summary

    console.rule(
        f"[bold]1. A {cfg.depth}-layer sigmoid MLP with standard init, checked on one batch"
    )
    before = check(model, probe_x, probe_y)
    print_summary(before, console=console, max_layers=20)

    console.rule("[bold]2. gw.fix: remedies applied to a copy until the check says healthy")
    fixed, report = fix(model, probe_x, probe_y)
    for name, details in report.applied:
        what = escape(describe_remedy(name, details))
        console.print(f"  applied [bold]{escape(name)}[/]: {what}")
    console.print(f"  verdict before: [red]{report.verdict_before}[/]  ->  after: "
                  f"[green]{report.verdict_after}[/]")

    console.rule("[bold]3. Both models trained the same way (same batches, Adam), watched")
    columns = (TextColumn("{task.description:<10}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        res_before = train(model, data, cfg, out / "before", progress, "original")
        res_after = train(fixed, data, cfg, out / "after", progress, "fixed")

    run_before, run_after = load(out / "before"), load(out / "after")
    console.rule("[bold]4. What the watched runs say")
    print_summary(run_before, console=console, max_layers=20)
    print_summary(run_after, console=console, max_layers=20)

    from gradwatch.report.html import write_html

    curves = {
        "original": _curve(res_before),
        "fixed": _curve(res_after),
    }
    write_html(run_after, out / "after" / "report.html")  # first: the main report links it
    report_path = write_html(
        run_before, out / "report.html", checkup=before, fix_report=report,
        compare={"original": run_before, "fixed": run_after}, accuracy=curves, chance=0.1,
    )
    verdict_run_before = _run_verdict(run_before)
    verdict_run_after = _run_verdict(run_after)
    result = {
        "config": asdict(cfg),
        "verdict_before": report.verdict_before,
        "verdict_after": report.verdict_after,
        "run_verdict_before": verdict_run_before,
        "run_verdict_after": verdict_run_after,
        "applied": [name for name, _ in report.applied],
        "before": res_before,
        "after": res_after,
        "report": str(report_path),
        "runs": [str(out / "before"), str(out / "after")],
        "seconds": time.perf_counter() - t0,
    }
    console.rule("[bold]Result")
    console.print(result_line("before", report.verdict_before, verdict_run_before, res_before))
    console.print(result_line("after", report.verdict_after, verdict_run_after, res_after))
    console.print(f"[dim](final loss: the {FINAL_LOSS_TEXT}, as in the report)[/]")
    console.print(f"report: [bold]{report_path}[/]  (runs: {out / 'before'}, {out / 'after'}; "
                  f"{result['seconds']:.0f} s)")
    return result


def result_line(which: str, verdict: str, run_verdict: str, result: dict) -> str:
    """One line of the demo's result (rich markup): the verdicts, test accuracy, final loss.

    The final loss is :func:`gradwatch.report.summary.final_loss` of the run, written by
    :func:`~gradwatch.report.summary.format_loss`: the number the report shows.
    """
    colour = "green" if verdict == "healthy" else "red"
    return (f"verdict {which}:{' ' * (7 - len(which))}[bold {colour}]{escape(verdict)}[/] "
            f"(training run: {escape(run_verdict)}); test accuracy "
            f"{result['test_accuracy']:.1%}, final loss {format_loss(result['final_loss'])}")


def _run_verdict(run: Run) -> str:
    from gradwatch.diagnose import verdict

    return verdict(run.findings)


def _curve(result: dict) -> tuple[list[int], list[float]]:
    curve = result["accuracy_curve"]
    return curve["steps"], curve["test_accuracy"]
