"""Watch a deep sigmoid network train on scikit-learn's digits, then read the run back.

    python examples/watch_deep_net.py [--out runs/deep-sigmoid] [--steps 200]

A 12-layer sigmoid MLP with the "standard" initialisation U[-1/sqrt(n), 1/sqrt(n)] is the
classic case of Glorot & Bengio (2010): the back-propagated gradient shrinks by roughly a factor
of four or more per layer toward the input. The script trains it with gradwatch watching, then
prints the per-layer gradient flow at the first and last step from the run directory alone.
"""

from __future__ import annotations

import argparse
import math

import torch
from sklearn.datasets import load_digits
from torch import nn

import gradwatch as gw


def make_model(depth: int = 12, width: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(64, width), nn.Sigmoid()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    layers.append(nn.Linear(width, 10))
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):  # Glorot & Bengio's "standard" init
            bound = 1 / math.sqrt(m.in_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/deep-sigmoid")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.tensor(digits.target)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    with gw.watch(model, args.out, optimizer=opt, overwrite=True) as mon:
        for _ in range(args.steps):
            idx = torch.randint(0, len(x), (64,))
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            mon.step(loss)

    run = gw.load(args.out)  # everything below reads the run directory only
    bp = run.pivot("backprop_norm")
    print(run)
    print(f"loss: {run.loss().iloc[0]:.3f} at step 0 -> {run.loss().iloc[-1]:.3f} at the end")
    print("back-propagated gradient norm per layer (input side first):")
    for step in (bp.index[0], bp.index[-1]):
        row = bp.loc[step]
        print(f"  step {step:>4}: " + "  ".join(f"{v:.1e}" for v in row.to_numpy()))
    ratio = bp.iloc[0, 0] / bp.iloc[0, -1]
    print(f"input-side / output-side ratio at step 0: {ratio:.1e}")


if __name__ == "__main__":
    main()
