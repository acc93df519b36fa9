"""Xiong et al. (2020): post-LN transformers need learning-rate warmup; pre-LN ones do not.

Paper: R. Xiong, Y. Yang, D. He, K. Zheng, S. Zheng, C. Xing, H. Zhang, Y. Lan, L. Wang and
T.-Y. Liu, "On Layer Normalization in the Transformer Architecture", ICML 2020.

The original (post-LN) transformer puts layer normalisation between the residual blocks,
x_{l+1} = LN(x_l + F(x_l)); the pre-LN variant puts it inside each block,
x_{l+1} = x_l + F(LN(x_l)), with one final LN before the output. Xiong et al. show
(their Theorem 1, Figure 3) that at initialisation the gradient of the last layer's
feed-forward weights is of order d √(ln d) in a post-LN net, whatever the depth L, and of
order d √(ln d / L) in a pre-LN net; in a post-LN net the gradient norm grows from the input
side toward the output, in a pre-LN net it is about level across layers. Large gradients
near the output make Adam's first steps too large: trained without warmup, a post-LN net
fails (their Figure 2: at lr 5·10⁻⁴ and 10⁻³ without warmup its validation loss stays high),
a linear warmup of the learning rate rescues it, and a pre-LN net trains without warmup.

Setup here: transformer encoders (``nn.TransformerEncoder``, ``norm_first`` False for
post-LN, True for pre-LN plus a final LayerNorm; model width 32, 4 heads, feed-forward 64,
no dropout), on a built-in synthetic task: reverse a sequence of 10 random tokens out of 15
(learned token and position embeddings, a linear read-out at every position; a uniform
guess costs ln 15 ≈ 2.71 nats per token). Adam with β = (0.9, 0.98) as in the paper, at a
learning rate of 10⁻² (the paper's 10⁻³ scaled up for a 16× narrower model: the effect
grows with d, Theorem 1), minibatches of 32 fresh sequences, with or without a linear
warmup over the first quarter of the steps. Gradient norms at initialisation are measured
at 6, 12 and 24 layers; the four trainings (post-LN, pre-LN, post-LN with warmup, DeepNorm
without warmup) run at 12 layers.

Expected (and checked):

1. at initialisation the post-LN net's gradients are larger near the output than the
   pre-LN net's: the last block's feed-forward gradient is ≥ :data:`GAP` × the pre-LN
   net's at every depth; and the post-LN profile rises toward the output relative to the
   pre-LN one (its last/first layer ratio ≥ :data:`GAP` × the pre-LN net's at every depth,
   in most seeds: at 6 layers the difference is small for one random draw);
2. from the shallowest to the deepest net the pre-LN net's last-layer gradient shrinks at
   least about as 1/√L (by ≥ :data:`DEPTH_SHARE` × √(L_max/L_min)) while the post-LN
   net's does not follow 1/√L (Theorem 1: independent of L): the pre-LN net's shrinks by
   that factor more than the post-LN net's (which, at this width, grows or shrinks a
   little with L depending on the draw);
3. without warmup the post-LN net stalls or diverges (its loss stays above half of ln 15)
   while the pre-LN net trains (below a tenth of ln 15);
4. with warmup the post-LN net trains (below a tenth of ln 15);
5. ``gw.diagnose`` flags the failing run (a warning or an error) and neither of the runs
   that trained;
6. the theory's line (:mod:`~gradwatch.experiments.xiong2020_theory`: ``gw.theory.predict``
   against autograd, each a geometric mean over 8 draws of nets whose layers are drawn
   independently, the theory's assumption): the last layer's FFN gradient (Theorem 1's
   quantity) within max(0.1 decade, 5% of the log) of the measurement, post-LN and pre-LN,
   at every depth;
7. every layer of the pre-LN nets within that tolerance (post-LN's inner layers are shown,
   not claimed: at 24 layers the theory has them shrink toward the input, 0.2 decade more
   than measured);
8. DeepNorm (Wang et al. 2022) trains without warmup where post-LN does not;
9. DeepNorm's first Adam step at initialisation changes the output by ≤ 0.75× what it
   changes post-LN's (DeepNet's bounded model update).

Figures (``figures/``): ``grad_at_init`` (left: ‖∂L/∂W_FFN2‖ per layer at initialisation of
the ``nn.TransformerEncoder`` nets, post-LN solid, pre-LN dashed, one colour per depth, log
scale, input side on the left: the post-LN lines rise to the right, the pre-LN lines are
flat and lower for deeper nets; right: the independent-layer nets measured (markers) and
predicted by ``gw.theory.predict`` (lines)) and ``loss`` (training loss of the four
12-layer runs against ln 15).

Run: ``gradwatch experiment xiong2020 [--quick]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from gradwatch.experiments import base
from gradwatch.experiments import xiong2020_theory as theory
from gradwatch.experiments.base import Claim, claim
from gradwatch.experiments.training import probe
from gradwatch.experiments.xiong2020_figures import plot  # noqa: F401 (the runner's)
from gradwatch.jsonable import from_jsonable

NAME = "xiong2020"
ARMS = ("post-LN", "pre-LN", "post-LN+warmup", "DeepNorm")  # the 12-layer trainings


@dataclass(frozen=True)
class Config:
    """Settings of the experiment (full mode); :data:`QUICK` is the quick one."""

    vocab: int = 16  # token 0 is never drawn; the task uses tokens 1..15
    seq_len: int = 10
    d_model: int = 32
    heads: int = 4
    d_ff: int = 64
    probe_depths: tuple[int, ...] = (6, 12, 24)  # gradient norms at initialisation
    train_depth: int = 12
    steps: int = 600
    warmup_frac: float = 0.25  # linear warmup over this share of the steps
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.98)  # as in the paper
    batch_size: int = 32
    probe_size: int = 256
    test_size: int = 512
    every: int = 2
    detail_every: int = 5
    window: int = 10  # recorded losses in the running mean


QUICK = Config(steps=250)


class Encoder(nn.Module):
    """Embeddings, a post-LN or pre-LN ``nn.TransformerEncoder``, a per-position read-out.

    Input (B, T) int64 tokens; output (B, V, T) logits (the layout ``F.cross_entropy``
    takes for per-position targets (B, T)).
    """

    def __init__(self, cfg: Config, depth: int, pre_ln: bool):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)  # N(0, 1)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        block = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.heads, cfg.d_ff, dropout=0.0, batch_first=True, norm_first=pre_ln
        )
        self.encoder = nn.TransformerEncoder(
            block,
            depth,
            norm=nn.LayerNorm(cfg.d_model) if pre_ln else None,  # pre-LN's final LN
            enable_nested_tensor=False,
        )
        self.head = nn.Linear(cfg.d_model, cfg.vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, V, T) for tokens (B, T)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.encoder(self.embed(tokens) + self.pos(positions))  # (B, T, D)
        return self.head(h).transpose(1, 2)  # (B, V, T)


def reverse_task(n: int, cfg: Config, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random sequences (B, T) of tokens 1..V-1 and their reversals (B, T)."""
    x = torch.randint(1, cfg.vocab, (n, cfg.seq_len), generator=gen)
    return x, x.flip(1)


def ffn_grads(run_dir: Path, depth: int) -> list[float]:
    """‖∂L/∂W‖ of each block's second feed-forward layer (``linear2``), input side first."""
    norms = base.layer_profile(run_dir, "grad_norm")
    return [norms[f"encoder.layers.{i}.linear2"] for i in range(depth)]


def train(
    model: Encoder, cfg: Config, warmup: int, run_dir: Path, seed: int, bar: Any, info: dict
) -> None:
    """Adam on fresh minibatches of the reverse task, watched by ``gw.watch``.

    The learning rate rises linearly from lr/warmup to lr over the first ``warmup`` steps
    (0: no warmup), then stays constant.
    """
    from gradwatch.experiments import gw

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    ramp = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    gen = torch.Generator().manual_seed(seed)
    with gw.watch(
        model,
        run_dir,
        optimizer=opt,
        every=cfg.every,
        detail_every=cfg.detail_every,
        overwrite=True,
        config=info,
    ) as mon:
        for _ in range(cfg.steps):
            x, y = reverse_task(cfg.batch_size, cfg, gen)  # (B, T), (B, T)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mon.step(loss=loss)
            ramp.step()
            bar.advance()


def build(cfg: Config, arm: str) -> nn.Module:
    """The net of a training arm, at the training depth (drawn from torch's global RNG)."""
    if arm == "DeepNorm":
        return theory.deepnorm(cfg, cfg.train_depth)
    return Encoder(cfg, cfg.train_depth, pre_ln=arm.startswith("pre"))


run = base.runner(__name__)


def measure(cfg: Config, out: Path, seed: int, bar: Any) -> dict[str, Any]:
    """Measure gradients at init, train the three arms; return the numbers."""
    from gradwatch.experiments import gw

    runs = out / base.RUNS
    chance = math.log(cfg.vocab - 1)
    numbers: dict[str, Any] = {"chance_loss": chance, "steps": cfg.steps, "init": {}, "runs": {}}
    bar.total(len(ARMS) * cfg.steps)
    gen = torch.Generator().manual_seed(seed + 1)
    xp, yp = reverse_task(cfg.probe_size, cfg, gen)  # the batch of the init measurement
    xt, yt = reverse_task(cfg.test_size, cfg, gen)  # held-out sequences

    # -- 1. gradient norms per layer at initialisation, post-LN and pre-LN -----------------
    for depth in cfg.probe_depths:
        for arch in ("post-LN", "pre-LN"):
            bar.note(f"{NAME}: {arch}, {depth} layers, at init")
            torch.manual_seed(seed * 1000 + depth)
            model = Encoder(cfg, depth, pre_ln=arch == "pre-LN")
            key = f"{arch}-L{depth}"
            probe(model, xp, yp, runs / f"{key}-init", {"experiment": NAME, "arch": arch})
            numbers["init"][key] = {
                "arch": arch,
                "depth": depth,
                "ffn_grad": ffn_grads(runs / f"{key}-init", depth),
            }

    # -- 1b. the theory's line beside the measurement (independent layers) ------------------
    xb, yb = xp[: theory.BATCH], yp[: theory.BATCH]
    numbers["theory"] = {}
    for depth in cfg.probe_depths:
        for arch in ("post-LN", "pre-LN"):
            bar.note(f"{NAME}: {arch}, {depth} layers, theory against measurement")
            line = theory.theory_line(cfg, depth, arch == "pre-LN", xb, yb, seed)
            numbers["theory"][f"{arch}-L{depth}"] = {"arch": arch, "depth": depth, **line}

    # -- 2. training at one depth, with and without warmup ---------------------------------
    numbers["first_update"] = {}
    for arm in ARMS:
        bar.note(f"{NAME}: {arm}, {cfg.train_depth} layers, training")
        torch.manual_seed(seed * 1000 + cfg.train_depth)
        model = build(cfg, arm)
        if arm in ("post-LN", "DeepNorm"):  # the first Adam step's change of the output
            numbers["first_update"][arm] = theory.first_update(model, cfg, xb, yb)
        warmup = round(cfg.warmup_frac * cfg.steps) if arm.endswith("warmup") else 0
        run_dir = runs / arm.replace("+", "_")
        info = {"experiment": NAME, "arm": arm, "depth": cfg.train_depth, "warmup": warmup}
        train(model, cfg, warmup, run_dir, seed, bar, info)

        # -- 3. numbers, read back from the run directory ----------------------------------
        losses = gw.load(run_dir).loss()
        smooth = losses.rolling(cfg.window, min_periods=1).mean()
        tail = max(1, len(losses) // 10)
        with torch.no_grad():
            model.eval()
            test_error = float((model(xt).argmax(1) != yt).float().mean())
        findings = gw.diagnose(run_dir)
        numbers["runs"][arm] = {
            "warmup": warmup,
            "curve_steps": [int(s) for s in smooth.index],
            "curve_loss": [float(v) for v in smooth.values],
            "loss_end": float(losses.iloc[-tail:].mean()),
            "all_finite": bool(np.isfinite(losses.to_numpy(dtype=float)).all()),
            "test_error": test_error,
            "flagged": sorted({f.kind for f in findings if f.severity in ("warning", "error")}),
        }
    return numbers


# Thresholds of the claims (from the effect sizes in Xiong et al., Figure 3 and Figure 2).
GAP = 2.0  # post-LN over pre-LN at the last layer, and in the last/first profile ratio
DEPTH_SHARE = 0.75  # pre-LN's last layer shrinks by ≥ this share of √(L_max/L_min)
FAILED = 0.5  # "stalls or diverges": final loss above this share of ln 15 (or non-finite)
TRAINED = 0.1  # "trains": final loss below this share of ln 15


def claims(numbers: dict[str, Any]) -> list[Claim]:
    """The paper's claims, computed from the measured numbers (pure: no side effects).

    Args:
        numbers: ``result["numbers"]``: {"chance_loss", "steps", "init": {"<arch>-L<depth>":
            {"arch", "depth", "ffn_grad"}}, "runs": {arm: {...}}}.

    Returns:
        the claims, each with its evidence.
    """
    numbers = from_jsonable(numbers)  # a record's "nan", "inf", "-inf" as floats
    init, runs, chance = numbers["init"], numbers["runs"], numbers["chance_loss"]
    nan = float("nan")

    def ratio(key: str) -> float:  # last layer / first layer
        g = init.get(key, {}).get("ffn_grad") or [nan]
        return g[-1] / g[0] if g[0] else nan

    def last(arch: str, depth: int) -> float:  # the last layer's FFN gradient
        g = init.get(f"{arch}-L{depth}", {}).get("ffn_grad") or [nan]
        return g[-1]

    depths = sorted({v["depth"] for v in init.values()})
    near_output = {d: last("post-LN", d) / last("pre-LN", d) for d in depths}
    tilt = {d: ratio(f"post-LN-L{d}") / ratio(f"pre-LN-L{d}") for d in depths}
    out: list[Claim] = [
        claim(
            "At initialisation the post-LN net's gradients are larger near the output than the "
            f"pre-LN net's: at every depth its last layer's FFN gradient is ≥ {GAP:g}× the "
            "pre-LN net's",
            bool(depths) and all(near_output[d] >= GAP for d in depths),
            post_over_pre_last_layer=near_output,
            threshold=GAP,
        ),
        # one draw of a 32-wide net: at 6 layers the tilt is small and varies with the draw
        # (2.3, 1.3, 2.2 over seeds 0-2), hence "in most seeds"
        claim(
            "At initialisation the post-LN net's gradient profile rises toward the output "
            f"relative to the pre-LN net's: at every depth its last/first layer ratio is ≥ "
            f"{GAP:g}× the pre-LN net's",
            bool(depths) and all(tilt[d] >= GAP for d in depths),
            need="majority",
            post_over_pre_last_over_first=tilt,
            post_ln_last_over_first={d: ratio(f"post-LN-L{d}") for d in depths},
            pre_ln_last_over_first={d: ratio(f"pre-LN-L{d}") for d in depths},
            threshold=GAP,
        ),
    ]

    lo, hi = (min(depths), max(depths)) if depths else (1, 1)
    predicted = math.sqrt(hi / lo)
    pre_shrink = last("pre-LN", lo) / last("pre-LN", hi)
    post_shrink = last("post-LN", lo) / last("post-LN", hi)
    out.append(
        claim(
            f"From {lo} to {hi} layers the pre-LN net's last-layer gradient shrinks at least "
            f"about as 1/√L (by ≥ {DEPTH_SHARE:g} × √({hi}/{lo}) = "
            f"{DEPTH_SHARE * predicted:.2f}×) while the post-LN net's does not follow 1/√L: "
            f"the pre-LN net's shrinks by ≥ {DEPTH_SHARE * predicted:.2f}× more than the "
            "post-LN net's",
            hi > lo
            and pre_shrink >= DEPTH_SHARE * predicted
            and pre_shrink >= DEPTH_SHARE * predicted * post_shrink,
            pre_ln_shrink=pre_shrink,
            post_ln_shrink=post_shrink,
            pre_over_post_shrink=pre_shrink / post_shrink if post_shrink else None,
            predicted_pre_ln=predicted,
            threshold=DEPTH_SHARE * predicted,
        )
    )

    def end(arm: str) -> float:
        r = runs.get(arm, {})
        return r.get("loss_end", nan) if r.get("all_finite", False) else math.inf

    post, pre, warm = end("post-LN"), end("pre-LN"), end("post-LN+warmup")
    out.append(
        claim(
            f"Without warmup the post-LN net stalls or diverges (final loss > {FAILED:g} × "
            f"ln 15, or non-finite) while the pre-LN net trains (< {TRAINED:g} × ln 15)",
            post > FAILED * chance and pre < TRAINED * chance,
            post_ln_loss=post,
            pre_ln_loss=pre,
            chance=chance,
        )
    )
    out.append(
        claim(
            f"Warmup rescues the post-LN net: with a linear warmup its final loss is < "
            f"{TRAINED:g} × ln 15",
            warm < TRAINED * chance,
            post_ln_warmup_loss=warm,
            warmup_steps=runs.get("post-LN+warmup", {}).get("warmup"),
            chance=chance,
        )
    )
    flagged = {arm: runs.get(arm, {}).get("flagged") for arm in ARMS[:3]}
    out.append(
        claim(
            "gw.diagnose flags the post-LN run without warmup, and neither run that trained",
            bool(flagged["post-LN"]) and not flagged["pre-LN"] and not flagged["post-LN+warmup"],
            findings=flagged,
        )
    )
    # records made before the theory line and the DeepNorm arm carry neither: judged on the rest
    if "theory" in numbers:
        out += theory.theory_claims(numbers["theory"], depths)
    if "DeepNorm" in runs:
        out += theory.deepnorm_claims(
            runs, numbers.get("first_update", {}), chance, FAILED, TRAINED
        )
    return out
