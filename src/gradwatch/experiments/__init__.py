"""The laboratory: one linear, readable script per classic result about gradient flow.

Each experiment is registered in :data:`EXPERIMENTS` by an :class:`ExperimentSpec`; its
module defines a ``@dataclass`` config, ``run(out_dir, quick=False, seed=0, seeds=None,
threads=1, **kw) -> dict`` and a pure ``claims(numbers) -> list[Claim]`` (see
:mod:`gradwatch.experiments.base`). Run one with :func:`run_experiment` or
``gradwatch experiment NAME [--quick] [--seeds N] [--threads N]``: every run covers several
seeds (3 in full mode) and each claim is judged over them
(:mod:`gradwatch.experiments.seeds`).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from gradwatch.errors import GradwatchValueError
from gradwatch.experiments.base import Claim, claim, finish, outcome


@dataclass(frozen=True)
class ExperimentSpec:
    """What the registry knows about an experiment without importing it.

    Attributes:
        name: the name on the command line.
        description: one line: what it shows.
        paper: the paper it reproduces (authors, year, title).
        module: the module that defines ``run`` and ``claims``.
    """

    name: str
    description: str
    paper: str
    module: str

    def load(self) -> ModuleType:
        """Import the experiment's module."""
        return importlib.import_module(self.module)

    def accepts(self, keyword: str) -> bool:
        """Whether the module's ``run`` names the parameter ``keyword``.

        Options such as ``executor`` or ``progress`` are passed only to experiments whose
        ``run`` names them (a catch-all ``**kw`` of config overrides does not count).
        """
        return keyword in inspect.signature(self.load().run).parameters

    def run(self, out_dir: str | Path, quick: bool = False, seed: int = 0, **kw: Any) -> dict:
        """Run the experiment; returns its result dict (also in ``out_dir/result.json``).

        ``kw``: ``seeds``, ``threads``, the module's other options and config overrides.
        """
        return self.load().run(Path(out_dir), quick=quick, seed=seed, **kw)


#: Every experiment, by name, in the order ``gradwatch experiment --list`` shows them.
EXPERIMENTS: dict[str, ExperimentSpec] = {
    spec.name: spec
    for spec in (
        ExperimentSpec(
            "glorot2010",
            "sigmoid/tanh/softsign MLPs, standard vs normalized init: saturation and "
            "back-propagated gradients",
            "Glorot & Bengio 2010, Understanding the difficulty of training deep "
            "feedforward neural networks",
            "gradwatch.experiments.glorot2010",
        ),
        ExperimentSpec(
            "he2015",
            "22- and 30-layer ReLU MLPs, Xavier vs He init: the Xavier net stalls at 30",
            "He, Zhang, Ren & Sun 2015, Delving Deep into Rectifiers",
            "gradwatch.experiments.he2015",
        ),
        ExperimentSpec(
            "residual",
            "plain vs residual vs batch-normalised deep MLPs: gradient flow and training "
            "loss as depth grows",
            "He, Zhang, Ren & Sun 2016, Deep Residual Learning for Image Recognition",
            "gradwatch.experiments.residual",
        ),
        ExperimentSpec(
            "criticality",
            "tanh MLPs over σw² × depth: trainable only within about 6 ξ_c of the critical "
            "line (a grid; --executor ray)",
            "Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017, Deep Information Propagation",
            "gradwatch.experiments.criticality",
        ),
        ExperimentSpec(
            "pascanu2013",
            "vanilla RNN vs LSTM vs GRU: gradients through time, the spectral condition, "
            "clipping an exploding RNN",
            "Pascanu, Mikolov & Bengio 2013, On the difficulty of training recurrent neural "
            "networks",
            "gradwatch.experiments.pascanu2013",
        ),
        ExperimentSpec(
            "xiong2020",
            "post-LN vs pre-LN transformer encoders: gradients at init, training with and "
            "without learning-rate warmup",
            "Xiong, Yang, He, Zheng, Zheng, Xing, Zhang, Lan, Wang & Liu 2020, On Layer "
            "Normalization in the Transformer Architecture",
            "gradwatch.experiments.xiong2020",
        ),
        ExperimentSpec(
            "micikevicius2018",
            "fp16 without loss scaling flushes the back-propagated gradients to zero and the "
            "net learns worse; a GradScaler matches fp32 (the Fig. 3 histogram)",
            "Micikevicius, Narang, Alben, Diamos, Elsen, Garcia, Ginsburg, Houston, Kuchaiev, "
            "Venkatesh & Wu 2018, Mixed Precision Training",
            "gradwatch.experiments.micikevicius2018",
        ),
    )
}


def get(name: str) -> ExperimentSpec:
    """The spec of experiment ``name``.

    Raises:
        GradwatchValueError: no experiment has that name (the message lists them).
    """
    if name not in EXPERIMENTS:
        raise GradwatchValueError(
            f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)} (or 'all')"
        )
    return EXPERIMENTS[name]


#: Options the command line passes to every experiment; each reaches only the experiments
#: whose ``run`` names it.
OPTIONS = ("executor", "progress", "seeds", "threads")


def run_experiment(
    name: str, out_dir: str | Path, quick: bool = False, seed: int = 0, **kw: Any
) -> dict:
    """Run experiment ``name`` into ``out_dir`` and return its result dict.

    Args:
        name: a key of :data:`EXPERIMENTS`.
        out_dir: the output folder.
        quick: run the quick version.
        seed: the first seed.
        **kw: :data:`OPTIONS` (``seeds``: how many seeds, None for the default, 3 in full
            mode and 1 in quick mode; ``threads``: torch threads; ``executor``,
            ``progress``; dropped for experiments whose ``run`` does not name them) and
            config overrides (passed as they are).

    Raises:
        GradwatchValueError: unknown ``name``.
    """
    spec = get(name)
    kw = {k: v for k, v in kw.items() if k not in OPTIONS or spec.accepts(k)}
    return spec.run(out_dir, quick=quick, seed=seed, **kw)


def gather(name: str, out_dir: str | Path, plot: bool = True) -> dict:
    """Rebuild ``out_dir/result.json`` of experiment ``name`` from its seed folders.

    For seeds run separately (one ``run_experiment(..., seed=s, seeds=1)`` each into the
    same ``out_dir``), or to judge stored runs with the claims as they are now; see
    :func:`gradwatch.experiments.runner.gather`.
    """
    from gradwatch.experiments.runner import gather as rebuild

    return rebuild(get(name).load(), out_dir, plot=plot)


__all__ = [
    "EXPERIMENTS",
    "Claim",
    "ExperimentSpec",
    "claim",
    "finish",
    "gather",
    "get",
    "outcome",
    "run_experiment",
]
