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
post-LN, True for pre-LN plus a final LayerNorm; model width 32, 4 heads, feed-forward 64, no
dropout; each layer initialised on its own, as in the paper's fairseq models, since
``nn.TransformerEncoder`` copies one layer N times), on a built-in synthetic task: reverse a
sequence of 10 random tokens out of 15 (learned token and position embeddings, a linear
read-out at every position; a uniform guess costs ln 15 ≈ 2.71 nats per token). Adam with
β = (0.9, 0.98) as in the paper, at a learning rate of 10⁻² (the paper's 10⁻³ scaled up for a
16× narrower model: the effect grows with d, Theorem 1), minibatches of 32 fresh sequences,
with or without a linear warmup over the first quarter of the steps. Gradient norms at
initialisation are measured at 6, 12 and 24 layers; the trainings run at 12 layers.

The DeepNorm arm (Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers"): post-LN
with x ← LN(α x + F(x)), α = (2N)^¼, and the value, output and feed-forward weights drawn
with gain β = (8N)^-¼ (N layers, encoder-only), trained like post-LN, without warmup.

Beside each measured gradient profile at initialisation, the prediction of
``gw.theory.predict`` from the same model's weights (mean-field theory of the recorded
forward pass, anchored at the gradient of the loss at the output).

Expected (and checked):

1. at initialisation the post-LN net's gradients are larger near the output than the
   pre-LN net's: the last block's feed-forward gradient is ≥ :data:`GAP` × the pre-LN
   net's at every depth, and the post-LN profile rises toward the output relative to the
   pre-LN one (its last/first layer ratio ≥ :data:`GAP` × the pre-LN net's);
2. from the shallowest to the deepest net the pre-LN net's last-layer gradient shrinks at
   least about as 1/√L (by ≥ :data:`DEPTH_SHARE` × √(L_max/L_min)) while the post-LN
   net's does not shrink (Theorem 1: independent of L);
3. without warmup the post-LN net stalls or diverges (its loss stays above half of ln 15)
   while the pre-LN net trains (below a tenth of ln 15);
4. with warmup the post-LN net trains (below a tenth of ln 15);
5. ``gw.diagnose`` flags the failing run (a warning or an error) and none of the runs that
   trained;
6. DeepNorm trains without warmup (below a tenth of ln 15), and at initialisation its
   profile does not rise toward the output as post-LN's does (its last/first ratio is at
   most half of post-LN's at every depth);
7. mean-field theory predicts every arm's per-layer FFN gradient at initialisation within a
   factor :data:`THEORY_FACTOR`.

Figures (``figures/``): ``grad_at_init`` (‖∂L/∂W_FFN2‖ per layer at initialisation, one
panel per architecture, one colour per depth, log scale, input side on the left; dots
measured, lines the theory's prediction: the post-LN profiles rise to the right, the pre-LN
ones are flat and lower for deeper nets, DeepNorm's flat and lower still) and ``loss``
(training loss of the four 12-layer runs against ln 15).

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
from gradwatch.experiments.architectures import DeepNormLayer, independent_layers_
from gradwatch.experiments.base import Claim, claim
from gradwatch.experiments.training import probe
from gradwatch.jsonable import from_jsonable

NAME = "xiong2020"
ARMS = ("post-LN", "pre-LN", "post-LN+warmup", "DeepNorm")  # the 12-layer trainings
ARCHS = ("post-LN", "pre-LN", "DeepNorm")  # the architectures probed at initialisation


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
        independent_layers_(self.encoder)  # its copies of `block` start identical otherwise
        self.head = nn.Linear(cfg.d_model, cfg.vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, V, T) for tokens (B, T)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.encoder(self.embed(tokens) + self.pos(positions))  # (B, T, D)
        return self.head(h).transpose(1, 2)  # (B, V, T)


class DeepNormEncoder(nn.Module):
    """Embeddings, ``depth`` DeepNorm layers (α = (2N)^¼, β = (8N)^-¼), a per-position read-out."""

    def __init__(self, cfg: Config, depth: int):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        alpha, beta = (2 * depth) ** 0.25, (8 * depth) ** -0.25
        self.layers = nn.ModuleList(
            DeepNormLayer(cfg.d_model, cfg.heads, cfg.d_ff, alpha, beta) for _ in range(depth)
        )
        self.head = nn.Linear(cfg.d_model, cfg.vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, V, T) for tokens (B, T)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.embed(tokens) + self.pos(positions)  # (B, T, D)
        for layer in self.layers:
            h = layer(h)
        return self.head(h).transpose(1, 2)  # (B, V, T)


def build(cfg: Config, depth: int, arch: str) -> nn.Module:
    """The post-LN, pre-LN or DeepNorm encoder of ``depth`` layers."""
    if arch.startswith("DeepNorm"):
        return DeepNormEncoder(cfg, depth)
    return Encoder(cfg, depth, pre_ln=arch.startswith("pre"))


def ffn2_names(depth: int, arch: str) -> list[str]:
    """The second feed-forward layer of each block, input side first."""
    if arch.startswith("DeepNorm"):
        return [f"layers.{i}.fc2" for i in range(depth)]
    return [f"encoder.layers.{i}.linear2" for i in range(depth)]


def reverse_task(n: int, cfg: Config, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random sequences (B, T) of tokens 1..V-1 and their reversals (B, T)."""
    x = torch.randint(1, cfg.vocab, (n, cfg.seq_len), generator=gen)
    return x, x.flip(1)


def ffn_grads(run_dir: Path, depth: int, arch: str = "post-LN") -> list[float]:
    """‖∂L/∂W‖ of each block's second feed-forward layer, input side first."""
    norms = base.layer_profile(run_dir, "grad_norm")
    return [norms[n] for n in ffn2_names(depth, arch)]


def theory_ffn_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, depth: int, arch: str
) -> list[float]:
    """``gw.theory.predict``'s ‖∂L/∂W‖ of each block's second feed-forward layer.

    The theory starts its backward pass from the cross-entropy's gradient at the logits on the
    same batch, (softmax − one-hot)/(B·T) (the boundary condition at the output: its second
    moments within and across sequences; the softmax's part is common to all sequences, so
    the sequences' contributions to ∂L/∂W add coherently, not only as a sum of squares).
    """
    from gradwatch.experiments import gw

    with torch.no_grad():
        logits = model(x)  # (B, V, T)
        p = torch.softmax(logits.double(), dim=1)
        onehot = F.one_hot(y, logits.shape[1]).transpose(1, 2).double()  # (B, V, T)
        grad = (p - onehot) / y.numel()
    table = gw.theory.predict(model, inputs=x, readout=grad).table.set_index("layer")
    return [math.sqrt(float(table.loc[n, "weight_grad2"])) for n in ffn2_names(depth, arch)]


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

    # -- 1. gradient norms per layer at initialisation, measured and predicted -------------
    for depth in cfg.probe_depths:
        for arch in ARCHS:
            bar.note(f"{NAME}: {arch}, {depth} layers, at init")
            torch.manual_seed(seed * 1000 + depth)
            model = build(cfg, depth, arch)
            key = f"{arch}-L{depth}"
            probe(model, xp, yp, runs / f"{key}-init", {"experiment": NAME, "arch": arch})
            numbers["init"][key] = {
                "arch": arch,
                "depth": depth,
                "ffn_grad": ffn_grads(runs / f"{key}-init", depth, arch),
                "ffn_grad_theory": theory_ffn_grads(model, xp, yp, depth, arch),
            }

    # -- 2. training at one depth, with and without warmup ---------------------------------
    for arm in ARMS:
        bar.note(f"{NAME}: {arm}, {cfg.train_depth} layers, training")
        torch.manual_seed(seed * 1000 + cfg.train_depth)
        model = build(cfg, cfg.train_depth, arm)
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
DEEPNORM_TILT = 0.5  # DeepNorm's last/first ratio is at most this share of post-LN's
THEORY_FACTOR = 2.0  # predicted and measured FFN gradients agree within this factor


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
            f"pre-LN net's, and its profile rises toward the output relative to the pre-LN "
            f"net's (last/first layer ratio ≥ {GAP:g}× the pre-LN net's)",
            bool(depths)
            and all(near_output[d] >= GAP for d in depths)
            and all(tilt[d] >= GAP for d in depths),
            post_over_pre_last_layer=near_output,
            post_over_pre_last_over_first=tilt,
            post_ln_last_over_first={d: ratio(f"post-LN-L{d}") for d in depths},
            pre_ln_last_over_first={d: ratio(f"pre-LN-L{d}") for d in depths},
            threshold=GAP,
        )
    ]

    lo, hi = (min(depths), max(depths)) if depths else (1, 1)
    predicted = math.sqrt(hi / lo)
    pre_shrink = last("pre-LN", lo) / last("pre-LN", hi)
    post_shrink = last("post-LN", lo) / last("post-LN", hi)
    out.append(
        claim(
            f"From {lo} to {hi} layers the pre-LN net's last-layer gradient shrinks at least "
            f"about as 1/√L (by ≥ {DEPTH_SHARE:g} × √({hi}/{lo}) = "
            f"{DEPTH_SHARE * predicted:.2f}×) while the post-LN net's does not shrink",
            hi > lo and pre_shrink >= DEPTH_SHARE * predicted and post_shrink <= 1.0,
            pre_ln_shrink=pre_shrink,
            post_ln_shrink=post_shrink,
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
    flagged = {arm: runs.get(arm, {}).get("flagged") for arm in ARMS}
    out.append(
        claim(
            "gw.diagnose flags the post-LN run without warmup, and none of the runs that trained",
            bool(flagged["post-LN"])
            and not any(flagged[a] for a in ("pre-LN", "post-LN+warmup", "DeepNorm")),
            findings=flagged,
        )
    )
    deep = end("DeepNorm")
    deep_tilt = {d: ratio(f"DeepNorm-L{d}") / ratio(f"post-LN-L{d}") for d in depths}
    out.append(
        claim(
            f"DeepNorm (x ← LN(αx + F(x)), α = (2N)^¼, β = (8N)^-¼) trains without warmup "
            f"(final loss < {TRAINED:g} × ln 15), and at initialisation its profile does not "
            f"rise toward the output as post-LN's does (last/first ratio ≤ {DEEPNORM_TILT:g} × "
            "post-LN's at every depth)",
            deep < TRAINED * chance and bool(depths)
            and all(deep_tilt[d] <= DEEPNORM_TILT for d in depths),
            deepnorm_loss=deep,
            deepnorm_last_over_first={d: ratio(f"DeepNorm-L{d}") for d in depths},
            deepnorm_over_post_ln_last_over_first=deep_tilt,
            chance=chance,
        )
    )
    errors = {}
    for key, rec in init.items():
        measured, predicted = rec.get("ffn_grad") or [], rec.get("ffn_grad_theory") or []
        pairs = [(m, p) for m, p in zip(measured, predicted, strict=False) if m > 0 and p > 0]
        errors[key] = max((abs(math.log(p / m)) for m, p in pairs), default=nan)
    worst = max(errors.values(), default=nan)
    out.append(
        claim(
            "Mean-field theory (gw.theory.predict, from each model's weights) predicts every "
            f"layer's FFN gradient at initialisation within a factor {THEORY_FACTOR:g}, for "
            "post-LN, pre-LN and DeepNorm at every depth",
            bool(errors) and all(math.isfinite(e) for e in errors.values())
            and worst <= math.log(THEORY_FACTOR),
            worst_factor=math.exp(worst) if math.isfinite(worst) else nan,
            factor_by_net={k: math.exp(e) if math.isfinite(e) else nan for k, e in errors.items()},
            threshold=THEORY_FACTOR,
        )
    )
    return out


def plot(out: Path, numbers: dict[str, Any], cfg: Config) -> list[Path]:
    """Draw the two figures from the numbers; return their paths."""
    paths: list[Path] = []
    archs = [a for a in ARCHS if any(v["arch"] == a for v in numbers["init"].values())]
    fig, axes = base.new_figure(1, len(archs), (3.6 * len(archs), 3.4), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        for j, depth in enumerate(cfg.probe_depths):
            rec = numbers["init"].get(f"{arch}-L{depth}", {})
            g, th = rec.get("ffn_grad"), rec.get("ffn_grad_theory")
            if g:
                ax.semilogy(range(1, len(g) + 1), g, "o", ms=3, color=f"C{j}", label=f"L = {depth}")
            if th:
                ax.semilogy(range(1, len(th) + 1), th, "-", lw=1, color=f"C{j}")
        ax.set(title=arch, xlabel="layer (1 = input side)")
    axes[0][0].set_ylabel("‖∂L/∂W_FFN2‖ at init")
    axes[0][0].legend(fontsize=7, title="dots: measured\nlines: theory", title_fontsize=7)
    paths += base.save_figure(fig, out, "grad_at_init")

    fig, ax = base.new_figure(1, 1, (5.6, 3.4))
    for j, arm in enumerate(ARMS):
        r = numbers["runs"].get(arm)
        if r:
            ax.plot(r["curve_steps"], r["curve_loss"], color=f"C{j + 3}", label=arm)
    ax.axhline(numbers["chance_loss"], color="grey", ls=":", label="ln 15 (chance)")
    ax.set(
        title=f"{cfg.train_depth} layers, Adam lr {cfg.lr:g}: training loss",
        xlabel="step",
        ylabel="cross-entropy per token",
        ylim=(0, 1.3 * numbers["chance_loss"]),
    )
    ax.legend(fontsize=7)
    paths += base.save_figure(fig, out, "loss")
    return paths
