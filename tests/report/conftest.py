"""Small real runs shared by the report tests (recorded once per session: the CPU is shared)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwatch as gw

XSS = "<script>alert(1)</script>"
# Would change the page title if it ever ran (module names cannot contain ".").
XSS_TITLE = "<img src=x onerror=document['title']='PWNED'>"
STEPS = 9
DETAIL_EVERY = 1  # every statistic at every step: the figures are checked step by step


class Mixed(nn.Module):
    """tanh and ReLU blocks (saturated_frac and dead_frac), then two hostile layer names."""

    def __init__(self, width: int = 16, depth: int = 5):
        super().__init__()
        self.body = nn.ModuleList()
        for i in range(depth):
            act = nn.Tanh() if i % 2 == 0 else nn.ReLU()
            self.body.append(nn.Sequential(nn.Linear(width, width), act))
        self.add_module(XSS_TITLE, nn.Linear(width, width))
        self.add_module(XSS, nn.Linear(width, 3))

    def forward(self, x):
        for block in self.body:
            x = block(x)
        x = torch.tanh(getattr(self, XSS_TITLE)(x))
        return getattr(self, XSS)(x)


def record(run_dir, model, steps=STEPS, **watch_kw):
    torch.manual_seed(0)
    x, y = torch.randn(32, 16), torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = {"optimizer": opt, "detail_every": DETAIL_EVERY, **watch_kw}
    with gw.watch(model, run_dir=run_dir, **kw) as mon:
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss=loss)
    return gw.load(run_dir)


@pytest.fixture(scope="session")
def mixed_run(tmp_path_factory):
    """9 steps of a 7-layer tanh/ReLU net whose last two layers have hostile names."""
    torch.manual_seed(0)
    return record(tmp_path_factory.mktemp("runs") / "mixed", Mixed())


@pytest.fixture(scope="session")
def bare_run(tmp_path_factory):
    """A run holding backprop_norm only: no grad_norm, update ratio, activations or loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    run_dir = tmp_path_factory.mktemp("runs") / "bare"
    x = torch.randn(8, 16)
    with gw.watch(model, run_dir=run_dir, stats=["backprop_norm"], detail_every=1) as mon:
        for _ in range(3):
            model.zero_grad()
            model(x).pow(2).mean().backward()
            mon.step()
    return gw.load(run_dir)


@pytest.fixture(scope="session")
def mixed_html(mixed_run, tmp_path_factory):
    """The HTML report of ``mixed_run`` (written once; several tests read it)."""
    from gradwatch.report import write_html

    return write_html(mixed_run, tmp_path_factory.mktemp("html") / "report.html")


class TinyRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


@pytest.fixture(scope="session")
def rnn_checkup():
    torch.manual_seed(0)
    return gw.check(TinyRNN(), torch.randn(8, 12, 4))


@pytest.fixture(scope="session")
def fix_report():
    """A real gw.fix report on a deep sigmoid net (init remedies only, to stay quick)."""
    if not hasattr(gw, "fix"):
        pytest.skip("gw.fix is not available in this checkout")
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 4))
    _, report = gw.fix(model, torch.randn(32, 16), allow="init", max_rounds=1)
    return report


@pytest.fixture(scope="session")
def sigmoid_run(tmp_path_factory):
    """9 steps of a 6-layer sigmoid net with standard init: its gradient vanishes."""
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    return record(tmp_path_factory.mktemp("runs") / "sigmoid", nn.Sequential(*layers,
                                                                               nn.Linear(16, 3)))


#: Held-out accuracy per run for the comparison report: (steps, values).
ACCURACY = {"original": ([0, 4, 8], [0.30, 0.34, 0.33]), "fixed": ([0, 4, 8], [0.32, 0.61, 0.9])}


@pytest.fixture(scope="session")
def compare_html(sigmoid_run, mixed_run, fix_report, tmp_path_factory):
    """A report laid out as the demo's: a fix section and two training runs side by side."""
    from gradwatch.report import write_html

    return write_html(
        sigmoid_run, tmp_path_factory.mktemp("html") / "compare.html", fix_report=fix_report,
        compare={"original": sigmoid_run, "fixed": mixed_run}, accuracy=ACCURACY, chance=1 / 3,
    )
