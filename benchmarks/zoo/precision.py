"""Low precision: what a cast to fp16, bf16 or fp8 flushes or overflows, before and in training.

Each case names the format (``Case.precision``): ``gw.check`` and ``gw.watch`` are asked for
it, and the runs that can be real mixed precision on a CPU are (``torch.autocast`` in fp16 or
bf16, with a GradScaler where the case says). PyTorch has no fp8 autocast on CPU: the e4m3
case trains in float32 and reads what the cast would lose. The truth of each case is a
brute-force cast of the checked batch's gradients (:func:`brute_force`, which the zoo tests
compare with the verdicts) and the training run's outcome.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .case import Case, Train
from .data import digits_batch, reverse_batch
from .mlp import CHANCE, adam, mlp, probe, sgd
from .transformer import Encoder, _ids, token_loss

FORMATS = {"fp16": torch.float16, "bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn,
           "e5m2": torch.float8_e5m2}


def brute_force(case: Case, model: nn.Module | None = None) -> dict[str, dict[str, float]]:
    """Per layer with parameters, what real casts to the case's format do on its batch.

    One forward/backward pass (the case's loss, cross-entropy by default) in float32; the
    parameter gradients and each layer's d loss / d output times the case's loss scale are
    cast with ``tensor.to(dtype)``: ``underflow`` is the largest of the two fractions of
    entries that are nonzero and become zero, ``overflow`` the largest fraction that
    become inf/NaN (for e4m3fn, whose cast saturates, that round beyond 448).
    """
    torch.manual_seed(case.seed)
    model = model or case.model()
    torch.manual_seed(case.seed + 1)
    inputs, targets = case.batch()
    dtype = FORMATS[case.precision]
    scale = case.loss_scale or 1.0
    outs: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            def keep(mod, a, o, name=name):
                if isinstance(o, torch.Tensor) and o.requires_grad:
                    o.retain_grad()
                    outs[name] = o
            handles.append(m.register_forward_hook(keep))
    out = model(*(inputs if isinstance(inputs, tuple) else (inputs,)))
    loss = case.loss(out, targets) if case.loss else nn.functional.cross_entropy(out, targets)
    loss.backward()
    for h in handles:
        h.remove()

    def fractions(ts: list[torch.Tensor]) -> tuple[float, float]:
        v = torch.cat([t.detach().float().reshape(-1) for t in ts]) * scale
        c = v.to(dtype).float()
        under = ((v != 0) & (c == 0)).double().mean()
        if dtype == torch.float8_e4m3fn:
            over = (c.isnan() | ((v / 2).to(dtype).float().abs() > 224)).double().mean()
        else:
            over = (~torch.isfinite(c)).double().mean()
        return float(under), float(over)

    result = {}
    for name, m in model.named_modules():
        ps = [p.grad for p in m.parameters(recurse=False) if p.grad is not None]
        if not ps:
            continue
        gu, go = fractions(ps)
        bu, bo = fractions([outs[name].grad]) if name in outs and outs[name].grad is not None \
            else (0.0, 0.0)
        result[name] = {"underflow": max(gu, bu), "overflow": max(go, bo)}
    return result


def sigmoid_unit_variance() -> nn.Sequential:
    """The issue's net: 12 sigmoid layers, W ~ N(0, 1/n) (σw² = 1), 64 wide."""
    return mlp(12, 64, nn.Sigmoid, "gauss", sigma_w2=1.0)


he12 = partial(mlp, 12, 128, nn.ReLU, "he")
he8 = partial(mlp, 8, 128, nn.ReLU, "he")


def small_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy times 1e-6: an auxiliary or heavily weighted-down loss. Adam does not mind
    the scale; fp16 does, the gradients sit below its smallest subnormal (6e-8)."""
    return nn.functional.cross_entropy(out, target) * 1e-6


def big_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch and times 1e4: gradients past fp16's 65504."""
    return nn.functional.cross_entropy(out, target, reduction="sum") * 1e4


def encoder_probe():
    return _ids(reverse_batch, n=8)()


def _train(outcome: str, opt, steps: int = 150, **kw) -> Train:
    kw.setdefault("baseline", CHANCE)
    return Train(steps=steps, optimizer=opt, batch=digits_batch, outcome=outcome, **kw)


CASES = [
    Case(
        name="lp_fp16_sigmoid_unscaled", family="precision", model=sigmoid_unit_variance,
        batch=probe, precision="fp16", expect_init="vanishing", expect_run="vanishing",
        source="brute-force casts: every gradient entry of the first Linear layers flushes to "
               "zero in fp16 without loss scaling; zoo training run (fp16 autocast, SGD)",
        train=_train("stalls", sgd(0.01), autocast=torch.float16),
        why="The vanishing gradient of the sigmoid net is the cause; the underflow finding "
            "says so and puts ReLU/He init first. In the run autocast's casts have flushed "
            "the signal before the Monitor reads it (zeros), so the run's verdict comes from "
            "the vanishing rule.", quick=True,
    ),
    Case(
        name="lp_fp16_he_relu", family="precision", model=he12, batch=probe,
        precision="fp16", expect_init="healthy", expect_run="healthy",
        source="brute-force casts: under 1% of any layer's gradient entries flush in fp16; "
               "zoo training run (fp16 autocast, Adam, no loss scaling)",
        train=_train("trains", adam(1e-3), autocast=torch.float16),
    ),
    Case(
        name="lp_bf16_he_relu", family="precision", model=he12, batch=probe,
        precision="bf16", expect_init="healthy", expect_run="healthy",
        source="brute-force casts: bf16 has float32's exponent range, nothing flushes; zoo "
               "training run (bf16 autocast, Adam)",
        train=_train("trains", adam(1e-3), autocast=torch.bfloat16),
    ),
    Case(
        name="lp_e4m3_encoder", family="precision", model=partial(Encoder, 4, True),
        batch=encoder_probe, loss=token_loss, precision="e4m3",
        expect_init="vanishing", expect_run="vanishing", budget_s=30,
        source="brute-force casts: most gradient entries of every layer of a pre-LN "
               "transformer flush in e4m3 without per-tensor scaling (fp8 recipes scale "
               "each tensor and keep e5m2 for gradients); zoo training run in float32",
        train=Train(steps=100, optimizer=adam(1e-3), batch=reverse_batch, outcome="trains",
                    baseline=None, drop=0.05),
        why="No fp8 autocast on CPU: the run trains in float32 and the statistics say what "
            "an e4m3 cast of its gradients would lose, step after step.",
    ),
    Case(
        name="lp_fp16_small_loss_unscaled", family="precision", model=he8, batch=probe,
        loss=small_loss, precision="fp16", expect_init="vanishing", expect_run="uncertain",
        source="brute-force casts: the gradients of a loss times 1e-6 flush in fp16; zoo "
               "training run (fp16 autocast, Adam, no loss scaling: the loss stays put)",
        train=_train("stalls", adam(1e-3), autocast=torch.float16, drop=0.3,
                     baseline=CHANCE * 1e-6),
        why="A healthy net whose loss is too small for fp16: at init the underflow finding "
            "blames the loss scale, not the network. In the fp16 run autocast's own casts "
            "have flushed the signal before the Monitor reads it: every gradient is an "
            "exact zero, which it cannot tell from a true zero, so the run is a net that "
            "does not learn for a reason gradwatch cannot see (watch the float32 run with "
            "precision='fp16' to see it).",
    ),
    Case(
        name="lp_fp16_grad_scaler_rescues", family="precision", model=he8, batch=probe,
        loss=small_loss, precision="fp16", loss_scale=2.0**24,
        expect_init="healthy", expect_run="healthy",
        source="brute-force casts at loss scale 2^24: nothing flushes; zoo training run "
               "(fp16 autocast, Adam, GradScaler from 2^24)",
        train=_train("trains", adam(1e-3), autocast=torch.float16, scaler_init_scale=2.0**24,
                     baseline=CHANCE * 1e-6),
        why="The same net and loss as lp_fp16_small_loss_unscaled: the GradScaler rescues it.",
    ),
    Case(
        name="lp_fp16_overflow", family="precision", model=he8, batch=probe,
        loss=big_loss, precision="fp16", expect_init="exploding", expect_run="nonfinite",
        source="brute-force casts: gradient entries past 65504 become inf in fp16; zoo "
               "training run (fp16 autocast, SGD, no GradScaler: the inf reaches the weights)",
        train=_train("diverges", sgd(1e-6), autocast=torch.float16),
    ),
]
