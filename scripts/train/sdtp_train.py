#!/usr/bin/env python3
"""Trains SDTP's prediction modules (Tao et al. 2025, arXiv 2504.04514, §3) with the paper's full
objective L = w_cls·L_cls + w_mse·L_mse + w_r·L_r, through a Gumbel-Softmax keep mask in a masked
forward pass of the frozen LLM, and writes them as an sdtp predictor file.

Per training sequence (prompt + answer, from a file `sdtp train-predictor --export-data` writes):
  1. marking pass: the dense model gives the saliency π̂ = (∂T/∂x)·x (summed over the hidden dim) at
     the hidden state x entering every stage layer, T = log p(argmax | prompt) at the last prompt
     token (sdtp's `last_logprob` objective). It is the target; nothing flows into it.
  2. pruning pass: the frozen model runs with a key mask. At stage s (layer l_s) the module scores
     the hidden state entering l_s *of this masked pass* (as at inference, later stages see the
     pruned network's states): s_i = out0 − out1 (keep minus drop logit). Prunable tokens are the
     prompt positions keep_first ≤ i < prompt_len − recent, recent = ceil(keep_recent·prompt_len)
     (at least 1: the last prompt token makes the prediction); the first tokens, the recent tail
     and the answer are always kept. Among the prunable tokens still alive, a detached threshold
     t_s is the quantile with a share r_s of the scores above it; the keep decision is the 2-way
     Gumbel-Softmax over (s_i − t_s, 0), i.e. y_i = sigmoid((s_i − t_s + g_i)/τ) with g_i logistic
     noise (the difference of two Gumbels), hard in the forward (1[y > 0.5]) with the gradient of y
     (straight-through). M_s = M_{s−1} ⊙ keep_s is the key mask of every layer from l_s on.
     The paper does not say how the training-time keep rate is fixed; the quantile threshold makes
     the expected kept share of the alive prunable tokens equal the stage's ratio r_s, as inference
     keeps the top r_s by score.
  L_cls: cross-entropy of the masked model's next-token predictions on the answer (positions
         prompt_len−1 .. len−2 predicting ids[t+1]).
  L_mse: mean over stages of MSE(s_i, z_i) over the prunable tokens, z the per-sequence, per-stage
         standardised log|π̂| (the paper's MSE(π, π̂) on a scale the module can reach).
  L_r:   mean over stages of the pairwise logistic loss log(1 + exp(−(s_i − s_j)·sign(|π̂_i| − |π̂_j|)))
         over --pairs random pairs of prunable tokens, pairs whose |π̂| differ by less than a factor
         e^0.2 skipped (as sdtp's C++ trainer, src/train/predictor_train.cpp).

The module of a stage (sdtp's Predictor): x̂ = h / sqrt(mean(h²) + 1e-6), out = fc2(GELU(fc1(x̂))),
fc1 n_embd → n_hidden, fc2 n_hidden → 2; the engine scores out[0] − out[1].

Held-out evaluation (every --eval-every steps and at the end): per stage Kendall τ between s and
|π̂| and the top-k overlap at the stage's ratio over the prunable tokens, L_r, and L_cls with the
hard inference mask (the engine's keep counts, top by score, no noise) next to the dense model's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_torch import LlamaModel, ModelError, load_model, saliency  # noqa: E402

PROG = "sdtp_train"
TRAINER = "scripts/train/sdtp_train.py"
NORM_EPS = 1e-6
PAIR_MARGIN = 0.2  # pairs need |π̂| more than a factor e^0.2 apart (sdtp's --margin default)
LOG_EPS = 1e-12


class UsageError(Exception):
    """Bad options or input files; the CLI prints `sdtp_train: error: <message>` and exits 2."""


# ----------------------------------------------------------------------------------------------
# Plan

def keep_count(ratio: float, n: int) -> int:
    """sdtp's keep_count (prune/selector.h): ceil(ratio·n), at least 1, at most n."""
    return min(n, max(1, math.ceil(ratio * n - 1e-4)))


def default_layers(n_layer: int) -> list[int]:
    """The paper's schedule (layer 4, then every 3 layers, on 32 layers) scaled to the depth:
    ceil(n_layer/8), then every ceil(3·n_layer/32) layers while < n_layer (sdtp's default plan)."""
    if n_layer < 2:
        return []
    first, step = max(1, -(-n_layer // 8)), max(1, -(-3 * n_layer // 32))
    return list(range(first, n_layer, step))


@dataclass
class Plan:
    layers: list[int]
    keep_ratios: list[float]
    keep_first: int = 4
    keep_recent: float = 0.1

    def validate(self, n_layer: int):
        if not self.layers:
            raise UsageError(f"a {n_layer}-layer model has no layer to prune at")
        if len(self.keep_ratios) == 1 and len(self.layers) > 1:
            self.keep_ratios = self.keep_ratios * len(self.layers)
        if len(self.keep_ratios) != len(self.layers):
            raise UsageError(f"--keep-ratio has {len(self.keep_ratios)} values for {len(self.layers)} layers")
        for i, l in enumerate(self.layers):
            if not (1 <= l < n_layer) or (i and l <= self.layers[i - 1]):
                raise UsageError(f"--layers {self.layers} must be increasing inside [1, {n_layer})")
        for r in self.keep_ratios:
            if not (0.0 < r <= 1.0):
                raise UsageError(f"--keep-ratio {r} is outside (0, 1]")
        if self.keep_first < 0:
            raise UsageError(f"--keep-first must be >= 0, got {self.keep_first}")
        if not (0.0 <= self.keep_recent < 1.0):
            raise UsageError(f"--keep-recent must be in [0, 1), got {self.keep_recent}")

    def recent(self, prompt_len: int) -> int:
        """The always-kept tail of a prompt, as the engine's Session: ceil(keep_recent·n), at least 1."""
        return keep_count(self.keep_recent, prompt_len) if self.keep_recent > 0 else 1

    def prunable(self, prompt_len: int) -> tuple[int, int]:
        """Prompt positions [lo, hi) the modules rank and prune (may be empty)."""
        lo = min(self.keep_first, prompt_len)
        return lo, max(lo, prompt_len - self.recent(prompt_len))


# ----------------------------------------------------------------------------------------------
# Data

@dataclass
class Sequence:
    ids: torch.Tensor  # int64 [n], prompt then answer
    prompt_len: int
    source: str
    heldout: bool


def load_data(path: str, n_vocab: int | None = None, n_ctx: int | None = None) -> tuple[list[Sequence], dict]:
    """Reads and validates an sdtp-train-data file (safetensors: ids I32, offsets I64, prompt_len I32,
    heldout U8, __metadata__ format/version/sources/model.name)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such data file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            want = {"ids": torch.int32, "offsets": torch.int64, "prompt_len": torch.int32, "heldout": torch.uint8}
            t = {}
            for k, dt in want.items():
                if k not in keys:
                    raise UsageError(f"{path}: missing tensor '{k}'")
                t[k] = f.get_tensor(k)
                if t[k].dtype != dt or t[k].dim() != 1:
                    raise UsageError(f"{path}: tensor '{k}' must be 1-D {str(dt).replace('torch.', '')}, "
                                     f"got {str(t[k].dtype).replace('torch.', '')} {list(t[k].shape)}")
            extra = keys - set(want)
            if extra:
                raise UsageError(f"{path}: unexpected tensor(s) {sorted(extra)}")
    except UsageError:
        raise
    except Exception as e:  # safetensors raises its own error types for a malformed file
        raise UsageError(f"{path}: not a safetensors file ({e})") from None
    if meta.get("format") != "sdtp-train-data":
        raise UsageError(f"{path}: __metadata__ 'format' is {meta.get('format')!r}, expected 'sdtp-train-data'")
    if meta.get("version") != "1":
        raise UsageError(f"{path}: data format version {meta.get('version')!r} is not supported (expected '1')")
    try:
        sources = json.loads(meta.get("sources", "null"))
    except json.JSONDecodeError:
        raise UsageError(f"{path}: __metadata__ 'sources' is not JSON") from None
    ids, off, pl, ho = t["ids"], t["offsets"], t["prompt_len"], t["heldout"]
    n = pl.shape[0]
    if n == 0:
        raise UsageError(f"{path}: no sequences")
    if off.shape[0] != n + 1 or ho.shape[0] != n:
        raise UsageError(f"{path}: {n} prompt lengths but {off.shape[0]} offsets and {ho.shape[0]} heldout flags "
                         f"(expected {n + 1} and {n})")
    if not isinstance(sources, list) or len(sources) != n or not all(isinstance(s, str) for s in sources):
        raise UsageError(f"{path}: __metadata__ 'sources' must be a JSON list of {n} strings")
    if int(off[0]) != 0 or int(off[-1]) != ids.shape[0]:
        raise UsageError(f"{path}: offsets must run from 0 to {ids.shape[0]} (the id count), "
                         f"got {int(off[0])} .. {int(off[-1])}")
    lens = off[1:] - off[:-1]
    answer = lens - pl.to(torch.int64)
    bad = torch.nonzero((pl < 1) | (answer < 1)).flatten()
    if bad.numel():
        i = int(bad[0])
        raise UsageError(f"{path}: sequence {i} has length {int(lens[i])} and prompt_len {int(pl[i])} "
                         "(need a prompt of >= 1 token and an answer of >= 1 token)")
    if ((ho != 0) & (ho != 1)).any():
        raise UsageError(f"{path}: heldout flags must be 0 or 1")
    if ids.numel() and (int(ids.min()) < 0 or (n_vocab is not None and int(ids.max()) >= n_vocab)):
        raise UsageError(f"{path}: token ids span [{int(ids.min())}, {int(ids.max())}], outside the model's "
                         f"vocabulary of {n_vocab}")
    if n_ctx and int(lens.max()) > n_ctx:
        raise UsageError(f"{path}: a sequence of {int(lens.max())} tokens exceeds the model's context of {n_ctx}")
    seqs = [Sequence(ids[int(off[i]):int(off[i + 1])].to(torch.int64), int(pl[i]), sources[i], bool(ho[i]))
            for i in range(n)]
    return seqs, meta


def write_data(path: str, seqs: list[tuple[list[int], int, bool, str]], model_name: str = ""):
    """Writes an sdtp-train-data file from (ids, prompt_len, heldout, source) tuples (tests, tools)."""
    from safetensors.torch import save_file

    ids, offsets, pl, ho, src = [], [0], [], [], []
    for s_ids, p_len, held, source in seqs:
        ids.extend(int(x) for x in s_ids)
        offsets.append(len(ids))
        pl.append(int(p_len))
        ho.append(1 if held else 0)
        src.append(source)
    save_file({"ids": torch.tensor(ids, dtype=torch.int32), "offsets": torch.tensor(offsets, dtype=torch.int64),
               "prompt_len": torch.tensor(pl, dtype=torch.int32), "heldout": torch.tensor(ho, dtype=torch.uint8)},
              path, metadata={"format": "sdtp-train-data", "version": "1", "sources": json.dumps(src),
                              "model.name": model_name})


# ----------------------------------------------------------------------------------------------
# The prediction module

class Stage(nn.Module):
    """One stage's module; must equal sdtp's Predictor::score (with the 2-way fc2 folded)."""

    def __init__(self, n_embd: int, n_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(n_embd, n_hidden)
        self.fc2 = nn.Linear(n_hidden, 2)  # row 0 = keep, row 1 = drop

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.fc1.weight.dtype)
        x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + NORM_EPS)  # parameter-free RMS norm
        out = self.fc2(F.gelu(self.fc1(x), approximate="none"))
        return out[..., 0] - out[..., 1]


class Predictor(nn.Module):
    def __init__(self, n_embd: int, n_hidden: int, n_stages: int, seed: int = 0):
        super().__init__()
        self.n_embd, self.n_hidden = n_embd, n_hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # nn.Linear's default init, reproducibly
            self.stages = nn.ModuleList(Stage(n_embd, n_hidden) for _ in range(n_stages))

    def forward(self, stage: int, h: torch.Tensor) -> torch.Tensor:
        return self.stages[stage](h)


# ----------------------------------------------------------------------------------------------
# Losses of one sequence

@dataclass
class LossOptions:
    w_cls: float = 1.0
    w_mse: float = 1.0
    w_rank: float = 1.0
    tau: float = 1.0
    pairs: int = 1024
    # The pruning pass without a graph through the frozen model (only with w_cls = 0 and a hard
    # mask): the modules get the gradients of L_mse and L_r at their own outputs only, not the
    # straight-through path from a later stage's scores back through the masked blocks to an earlier
    # stage's mask. Keys are masked out exactly (the fused attention on a GPU), so long sequences fit.
    detach_pass: bool = False


class StraightThrough(torch.autograd.Function):
    """Forward 1[y > 0.5] (exactly 0 or 1), backward the gradient of y unchanged."""

    @staticmethod
    def forward(ctx, y):
        return (y > 0.5).to(y.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


def logistic_noise(n: int, gen: torch.Generator, device=None) -> torch.Tensor:
    """g = G1 − G2 of two standard Gumbels, i.e. log u − log(1 − u) (float64, on gen's device)."""
    u = torch.rand(n, generator=gen, dtype=torch.float64, device=device or gen.device).clamp(1e-12, 1 - 1e-12)
    return torch.log(u) - torch.log1p(-u)


def alive_quantile(x: torch.Tensor, alive: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(x[alive], q) (linear interpolation) computed on the device without a host
    sync; 0 when nothing is alive."""
    n = x.shape[0]
    srt = torch.where(alive, x.to(torch.float64), torch.full_like(x, -math.inf, dtype=torch.float64)).sort().values
    n_alive = alive.sum()
    pos = (n - n_alive) + q * (n_alive - 1).clamp_min(0).to(torch.float64)  # the dead sort first
    lo = pos.floor().long().clamp(0, n - 1)
    hi = pos.ceil().long().clamp(0, n - 1)
    v = srt[lo] + (srt[hi] - srt[lo]) * (pos - lo)
    return torch.where(n_alive > 0, v, torch.zeros_like(v)).to(x.dtype)


def sample_pairs(logt: torch.Tensor, n_pairs: int, gen: torch.Generator):
    """Random pairs (i, j) of positions 0..n−1 for the ranking loss: 4·n_pairs candidates drawn at
    once, the first n_pairs whose log|π̂| differ by more than the margin weighted 1, the others 0
    (no host sync; the C++ trainer tries up to 8·n_pairs one by one). Returns (i, j, sign(|π̂_i| −
    |π̂_j|), weight), or None for fewer than 2 positions."""
    n = logt.shape[0]
    if n < 2:
        return None
    cand = torch.randint(0, n, (2, 4 * n_pairs), generator=gen, device=gen.device).to(logt.device)
    d = logt[cand[0]] - logt[cand[1]]
    ok = d.abs() > PAIR_MARGIN
    w = ok & (torch.cumsum(ok, 0) <= n_pairs)
    return cand[0], cand[1], torch.sign(d), w


def ranking_loss(s: torch.Tensor, pairs) -> torch.Tensor:
    """Mean over the weighted pairs of log(1 + exp(−(s_i − s_j)·y)); 0 without pairs."""
    i, j, y, w = pairs
    w = w.to(s.dtype)
    return (F.softplus(-(s[i] - s[j]) * y.to(s.dtype)) * w).sum() / w.sum().clamp_min(1)


def standardised_log(sal: torch.Tensor) -> torch.Tensor:
    lt = torch.log(sal.abs() + LOG_EPS)
    return (lt - lt.mean()) / (lt.std(unbiased=False) + LOG_EPS)


@dataclass
class SeqResult:
    """Detached tensors except `loss` (reading them syncs the device: the trainer does it rarely)."""
    loss: torch.Tensor
    cls: torch.Tensor
    mse: torch.Tensor
    rank: torch.Tensor
    kept: list = field(default_factory=list)  # share of the prunable tokens alive after each stage
    thresholds: list = field(default_factory=list)


def marking_pass(model: LlamaModel, seq: Sequence, plan: Plan):
    """Saliency π̂ [prompt_len] at every stage layer (dense model, T at the last prompt token) and the
    hidden state [n, D] entering the first stage layer for the whole sequence (identical in the
    dense and the masked pass: nothing is pruned before it)."""
    ids = seq.ids.to(model.device)
    with torch.no_grad():
        _, hs = model.forward(ids, capture=[plan.layers[0]], until=plan.layers[0])
    h0 = hs[plan.layers[0]]
    sal, _, _ = saliency(model, ids, plan.layers, t=seq.prompt_len - 1, hidden=h0[: seq.prompt_len])
    return sal, h0


def sequence_losses(model: LlamaModel, score, seq: Sequence, plan: Plan, sal: dict, h0: torch.Tensor,
                    opts: LossOptions, gen: torch.Generator | None = None, *, hard: bool = True,
                    noise: list | None = None, thresholds: list | None = None) -> SeqResult:
    """The pruning pass and L = w_cls·L_cls + w_mse·L_mse + w_r·L_r of one sequence.

    score(stage, h) -> scores: the modules (a Predictor, or a functional call of one in tests).
    sal, h0: from marking_pass. gen (on the model's device) draws the Gumbel noise and the pairs.
    hard=False uses the soft Gumbel-Softmax sample y as the mask (smooth: gradient checks);
    noise / thresholds: fixed per-stage noise vectors and thresholds instead of drawn / computed ones.
    """
    dev = h0.device
    n, P = seq.ids.shape[0], seq.prompt_len
    lo, hi = plan.prunable(P)
    n_p = hi - lo
    stage_of = {l: s for s, l in enumerate(plan.layers)}
    ones = torch.ones(n, dtype=model.dtype, device=dev)
    state = {"mask": ones}
    scores, used_t, kept = {}, [], []

    detached = opts.detach_pass
    if detached and (opts.w_cls != 0 or not hard):
        raise ValueError("detach_pass needs w_cls = 0 and a hard mask")

    def on_layer(l, h):
        s_idx = stage_of.get(l)
        if s_idx is None or n_p == 0:
            return None
        if detached:
            with torch.enable_grad():
                sc = score(s_idx, h[lo:hi].detach())
        else:
            sc = score(s_idx, h[lo:hi])
        scores[s_idx] = sc
        prev = state["mask"][lo:hi]
        if thresholds is not None:
            t = thresholds[s_idx]
        else:  # a share r_s of the alive prunable scores above t (detached)
            alive = prev if detached else prev.detach() > 0.5
            t = alive_quantile(sc.detach(), alive, 1.0 - plan.keep_ratios[s_idx])
        used_t.append(t)
        g = noise[s_idx] if noise is not None else logistic_noise(n_p, gen)
        # 2-way Gumbel-Softmax over (s − t, 0): softmax of ((s − t + G1), G2)/τ = sigmoid((s − t + G1 − G2)/τ)
        y = torch.sigmoid((sc - t + g.to(device=dev, dtype=sc.dtype)) / opts.tau)
        if detached:  # a boolean key mask: exact removal, no graph
            m = prev & (y.detach() > 0.5)
            kept.append(m.to(model.dtype).mean())
            state["mask"] = torch.cat([ones_b[:lo], m, ones_b[hi:]])
            return state["mask"]
        keep = StraightThrough.apply(y) if hard else y
        m = prev * keep.to(prev.dtype)
        kept.append(m.detach().mean())
        state["mask"] = torch.cat([ones[:lo], m, ones[hi:]])
        return state["mask"]

    if detached:
        ones_b = torch.ones(n, dtype=torch.bool, device=dev)
        state["mask"] = ones_b
    want_cls = opts.w_cls != 0
    rows = list(range(P - 1, n - 1)) if want_cls else []
    with torch.no_grad() if detached else contextlib.nullcontext():
        logits, _ = model.forward(seq.ids.to(dev), start_layer=plan.layers[0], hidden=h0, on_layer=on_layer,
                                  logit_rows=rows)
    zero = torch.zeros((), dtype=model.dtype, device=dev)
    l_cls = F.cross_entropy(logits, seq.ids[P:].to(dev)) if want_cls else zero
    mse_terms, rank_terms, rank_has = [], [], []
    for s_idx, sc in scores.items():
        target = sal[plan.layers[s_idx]][lo:hi].to(device=dev, dtype=torch.float64)
        if n_p >= 2 and opts.w_mse != 0:
            mse_terms.append(F.mse_loss(sc, standardised_log(target).to(sc.dtype)))
        if opts.w_rank != 0:
            pairs = sample_pairs(torch.log(target.abs() + LOG_EPS), opts.pairs, gen)
            if pairs is not None:
                rank_terms.append(ranking_loss(sc, pairs))
                rank_has.append(pairs[3].any())
    l_mse = torch.stack(mse_terms).mean().to(zero.dtype) if mse_terms else zero
    if rank_terms:  # mean over the stages that have pairs
        has = torch.stack(rank_has).to(zero.dtype)
        l_r = (torch.stack(rank_terms).to(zero.dtype) * has).sum() / has.sum().clamp_min(1)
    else:
        l_r = zero
    loss = opts.w_cls * l_cls + opts.w_mse * l_mse + opts.w_rank * l_r
    return SeqResult(loss=loss, cls=l_cls.detach(), mse=l_mse.detach(), rank=l_r.detach(), kept=kept,
                     thresholds=used_t)


# ----------------------------------------------------------------------------------------------
# Held-out evaluation

def kendall_tau(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> float:
    """(concordant − discordant) / (concordant + discordant) over all pairs, ties left out (as the
    C++ trainer's agreement, which samples the pairs)."""
    n = a.shape[0]
    conc = disc = 0
    a, b = a.to(torch.float64), b.to(torch.float64)
    for r0 in range(0, n, chunk):
        sa = torch.sign(a[r0:r0 + chunk, None] - a[None, :])
        sb = torch.sign(b[r0:r0 + chunk, None] - b[None, :])
        prod = sa * sb
        conc += int((prod > 0).sum())
        disc += int((prod < 0).sum())
    return (conc - disc) / (conc + disc) if conc + disc else 0.0


def topk_overlap(score: torch.Tensor, target: torch.Tensor, ratio: float) -> float:
    k = keep_count(ratio, score.shape[0])
    a = set(torch.topk(score, k).indices.tolist())
    b = set(torch.topk(target, k).indices.tolist())
    return len(a & b) / k


def hard_mask_pass(model: LlamaModel, score, seq: Sequence, plan: Plan, h0: torch.Tensor):
    """The masked pass with the inference decision: at each stage the engine's keep count
    max(keep_count(r, alive), forced) of the alive prompt tokens (forced = the first keep_first and
    the recent tail), the prunable ones by highest score; no noise. Returns (answer CE, {stage:
    scores of the prunable tokens})."""
    dev = h0.device
    n, P = seq.ids.shape[0], seq.prompt_len
    lo, hi = plan.prunable(P)
    forced = min(P, min(plan.keep_first, P) + plan.recent(P))
    kept_at, alive = [], P
    for r in plan.keep_ratios:
        alive = max(keep_count(r, alive), forced)
        kept_at.append(alive)
    stage_of = {l: s for s, l in enumerate(plan.layers)}
    state = {"mask": torch.ones(n, dtype=torch.bool, device=dev)}  # boolean: keys removed exactly
    scores = {}

    def on_layer(l, h):
        s_idx = stage_of.get(l)
        if s_idx is None or hi == lo:
            return None
        sc = score(s_idx, h[lo:hi])
        scores[s_idx] = sc
        m = state["mask"].clone()
        alive_p = m[lo:hi]
        n_keep = kept_at[s_idx] - forced
        cand = torch.where(alive_p, sc.to(torch.float64), torch.full_like(sc, -math.inf, dtype=torch.float64))
        keep = torch.zeros(hi - lo, dtype=torch.bool, device=dev)
        if n_keep > 0:
            keep[torch.topk(cand, min(n_keep, hi - lo)).indices] = True
        m[lo:hi] = keep & alive_p
        state["mask"] = m
        return m

    logits, _ = model.forward(seq.ids.to(dev), start_layer=plan.layers[0], hidden=h0, on_layer=on_layer,
                              logit_rows=list(range(P - 1, n - 1)))
    return float(F.cross_entropy(logits, seq.ids[P:].to(dev))), scores


@torch.no_grad()
def evaluate(model: LlamaModel, predictor: Predictor, seqs: list[Sequence], plan: Plan, pairs: int = 1024,
             seed: int = 0) -> dict:
    """Held-out metrics, means over the sequences (per stage where it applies)."""
    S = len(plan.layers)
    tau, topk, rank = [[] for _ in range(S)], [[] for _ in range(S)], [[] for _ in range(S)]
    cls, cls_dense = [], []
    dev = model.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    for seq in seqs:
        ids = seq.ids.to(dev)
        P = seq.prompt_len
        lo, hi = plan.prunable(P)
        logits, hs = model.forward(ids, capture=[plan.layers[0]], logit_rows=list(range(P - 1, len(ids) - 1)))
        cls_dense.append(float(F.cross_entropy(logits, ids[P:])))
        h0 = hs[plan.layers[0]]
        sal, _, _ = saliency(model, ids, plan.layers, t=P - 1, hidden=h0[:P])
        ce, scores = hard_mask_pass(model, predictor, seq, plan, h0)
        cls.append(ce)
        for s_idx, sc in scores.items():
            target = sal[plan.layers[s_idx]][lo:hi].abs()
            if hi - lo >= 2:
                tau[s_idx].append(kendall_tau(sc, target))
                topk[s_idx].append(topk_overlap(sc.to(torch.float64), target.to(torch.float64),
                                                plan.keep_ratios[s_idx]))
                p = sample_pairs(torch.log(target + LOG_EPS), pairs, gen)
                if p is not None and bool(p[3].any()):
                    rank[s_idx].append(float(ranking_loss(sc, p)))

    def mean(v):
        return sum(v) / len(v) if v else float("nan")

    return {"kendall_tau": [mean(v) for v in tau], "topk_overlap": [mean(v) for v in topk],
            "rank_loss": [mean(v) for v in rank], "cls": mean(cls), "cls_dense": mean(cls_dense),
            "sequences": len(seqs)}


def eval_table(ev: dict, plan: Plan, start: dict | None = None) -> str:
    lines = [f"{'stage':>5} {'layer':>5} {'keep':>5} {'kendall_tau':>11} {'topk_overlap':>12} {'rank_loss':>9}"
             + ("  (tau at start)" if start else "")]
    for s, l in enumerate(plan.layers):
        lines.append(f"{s:5d} {l:5d} {plan.keep_ratios[s]:5.2f} {ev['kendall_tau'][s]:11.4f} "
                     f"{ev['topk_overlap'][s]:12.4f} {ev['rank_loss'][s]:9.4f}"
                     + (f"  ({start['kendall_tau'][s]:.4f})" if start else ""))
    lines.append(f"answer cross-entropy: pruned (hard mask) {ev['cls']:.4f}, dense {ev['cls_dense']:.4f} "
                 f"over {ev['sequences']} held-out sequences")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The predictor file

def _f32_text_value(v: float) -> float:
    """The float whose shortest repr is the shortest text of float32(v) (as sdtp's float_text)."""
    import numpy as np

    return float(str(np.float32(v)))


def predictor_metadata(model: LlamaModel, predictor: Predictor, plan: Plan, info: dict) -> dict:
    c = model.config
    compact = {"separators": (",", ":")}
    meta = {"format": "sdtp-predictor", "version": "1", "model.arch": c.arch, "model.name": c.name,
            "model.n_layer": str(c.n_layer), "model.n_embd": str(c.n_embd), "model.n_vocab": str(c.n_vocab),
            "model.fingerprint": json.dumps([_f32_text_value(v) for v in model.fingerprint()], **compact),
            "plan.layers": json.dumps(plan.layers, **compact),
            "plan.keep_ratios": json.dumps([_f32_text_value(r) for r in plan.keep_ratios], **compact),
            "plan.keep_first": str(plan.keep_first), "plan.keep_recent": repr(_f32_text_value(plan.keep_recent)),
            "n_hidden": str(predictor.n_hidden)}
    for k, v in info.items():
        meta["info." + k] = v if isinstance(v, str) else json.dumps(v, **compact)
    return meta


def save_predictor(path: str, model: LlamaModel, predictor: Predictor, plan: Plan, info: dict):
    """safetensors, all F32: stage.{s}.fc1.weight [n_hidden, n_embd], .fc1.bias [n_hidden],
    .fc2.weight [2, n_hidden] (row 0 keep, row 1 drop), .fc2.bias [2]; metadata as sdtp's
    save_predictor (prune/predictor.cpp) plus plan.keep_recent. Written atomically."""
    from safetensors.torch import save_file

    tensors = {}
    for s, st in enumerate(predictor.stages):
        for name, t in (("fc1.weight", st.fc1.weight), ("fc1.bias", st.fc1.bias), ("fc2.weight", st.fc2.weight),
                        ("fc2.bias", st.fc2.bias)):
            v = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
            if not torch.isfinite(v).all():
                raise RuntimeError(f"stage {s} {name} holds a non-finite value; not writing {path}")
            tensors[f"stage.{s}.{name}"] = v
    tmp = f"{path}.tmp.{os.getpid()}"
    save_file(tensors, tmp, metadata=predictor_metadata(model, predictor, plan, info))
    os.replace(tmp, path)


def load_predictor_into(predictor: Predictor, path: str, plan: Plan):
    """Copies the modules of a predictor file (save_predictor's layout) into `predictor`; the file's
    stage layers must be the plan's and its shapes the predictor's."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "sdtp-predictor":
                raise UsageError(f"--init {path}: not an sdtp predictor file")
            layers = json.loads(meta.get("plan.layers", "null"))
            if layers != plan.layers:
                raise UsageError(f"--init {path}: its stages are at layers {layers}, the plan's at {plan.layers}")
            for s, st in enumerate(predictor.stages):
                for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
                    key = f"stage.{s}.{name}"
                    if key not in f.keys():
                        raise UsageError(f"--init {path}: no tensor {key}")
                    t = f.get_tensor(key)
                    dst = st.get_parameter(name)
                    if t.shape != dst.shape:
                        raise UsageError(f"--init {path}: {key} is {list(t.shape)}, expected {list(dst.shape)} "
                                         "(another model or --n-hidden?)")
                    with torch.no_grad():
                        dst.copy_(t.to(dst.dtype))
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"--init {path}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Training

def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 5% of the steps, then cosine from lr to lr/10 (step 1-based)."""
    warm = max(1, round(0.05 * steps))
    if step <= warm:
        return lr * step / warm
    prog = (step - warm) / max(1, steps - warm)
    return lr / 10 + (lr - lr / 10) * 0.5 * (1 + math.cos(math.pi * prog))


def fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ArgParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{PROG}: error: {message}", file=sys.stderr)
        sys.exit(2)


def float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: '{text}'") from None


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: '{text}'") from None


def build_parser() -> ArgParser:
    ap = ArgParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                   description="Trains SDTP's prediction modules with the full objective "
                               "L = w_cls*L_cls + w_mse*L_mse + w_r*L_r (Gumbel-Softmax keep mask in a masked "
                               "forward pass of the frozen model) and writes an sdtp predictor file.",
                   epilog="example:\n"
                          "  sdtp train-predictor -m MODEL.gguf --data text.txt --export-data train.safetensors\n"
                          "  python scripts/train/sdtp_train.py --model MODEL.gguf --data train.safetensors \\\n"
                          "      --out model.sdtp.safetensors --steps 600 --batch 4\n"
                          "See scripts/train/README.md.")
    a = ap.add_argument
    a("--model", required=True, metavar="PATH", help="GGUF file or Hugging Face folder of the frozen model")
    a("--data", required=True, metavar="FILE",
      help="training set (sdtp-train-data safetensors from `sdtp train-predictor --export-data`)")
    a("--out", required=True, metavar="FILE", help="predictor file to write (.safetensors)")
    a("--device", default=None, help="cuda or cpu (default: cuda when available)")
    a("--steps", type=int, default=600, metavar="N", help="optimiser steps (default 600)")
    a("--batch", type=int, default=4, metavar="N", help="sequences per step, gradients accumulated (default 4)")
    a("--lr", type=float, default=1e-3, help="AdamW learning rate, no weight decay; 5%% warm-up then cosine "
                                              "to lr/10 (default 1e-3)")
    a("--seed", type=int, default=0, help="seed of the initialisation, data order, noise and pairs (default 0)")
    a("--w-cls", type=float, default=1.0, metavar="W", help="weight of L_cls, the masked model's answer CE (1)")
    a("--w-mse", type=float, default=1.0, metavar="W", help="weight of L_mse, scores vs standardised log|saliency| (1)")
    a("--w-rank", type=float, default=1.0, metavar="W", help="weight of L_r, the pairwise ranking loss (1)")
    a("--tau", type=float, default=1.0, help="Gumbel-Softmax temperature (default 1.0)")
    a("--detach-pass", action="store_true",
      help="with --w-cls 0: run the pruning pass without a graph through the frozen model (the modules "
           "learn from L_mse and L_r at their own outputs only; keys removed exactly by the fused "
           "attention), so sequences of 8K tokens and more fit and train several times faster")
    a("--init", default=None, metavar="FILE",
      help="start from the modules of this predictor file (same model, layers and n_hidden), e.g. to "
           "train a further epoch; the learning-rate schedule starts afresh")
    a("--pairs", type=int, default=1024, metavar="N", help="sampled pairs per sequence and stage for L_r (1024)")
    a("--layers", type=int_list, default=None, metavar="LIST",
      help="pruning layers, comma-separated (default: the paper's schedule scaled to depth: ceil(L/8), then "
           "every ceil(3L/32) layers; SmolLM2's 30 layers: 4,7,...,28)")
    a("--keep-ratio", type=float_list, default=[0.9], metavar="LIST",
      help="keep ratio per stage, comma-separated; one value for every stage (default 0.9)")
    a("--keep-first", type=int, default=4, metavar="N", help="first prompt tokens always kept (default 4)")
    a("--keep-recent", type=float, default=0.1, metavar="F",
      help="share of the prompt's last tokens always kept, ceil(F*prompt_len), at least 1 (default 0.1)")
    a("--n-hidden", type=int, default=0, metavar="N", help="hidden units of each module (default n_embd/4)")
    a("--dtype", choices=["float32", "bfloat16"], default="float32",
      help="dtype of the frozen model's matmuls (norms, softmax and the residual stream stay float32)")
    a("--log", default=None, metavar="FILE", help="append a JSON line per logged step and evaluation")
    a("--eval-every", type=int, default=50, metavar="N",
      help="steps between held-out evaluations (also before the first step and at the end; 0: only at the end)")
    a("--print-every", type=int, default=10, metavar="N", help="steps between progress lines on stderr (10)")
    a("--max-minutes", type=float, default=0, metavar="M",
      help="stop training after M minutes (then the final evaluation and the file; the steps done are "
           "recorded); 0: no limit (default)")
    return ap


def check_args(args):
    for name in ("steps", "batch", "pairs", "print_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (args.max_minutes >= 0 and math.isfinite(args.max_minutes)):
        raise UsageError(f"--max-minutes must be >= 0, got {args.max_minutes}")
    if args.eval_every < 0:
        raise UsageError(f"--eval-every must be >= 0, got {args.eval_every}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if not (args.tau > 0 and math.isfinite(args.tau)):
        raise UsageError(f"--tau must be positive, got {args.tau}")
    for name in ("w_cls", "w_mse", "w_rank"):
        v = getattr(args, name)
        if not (v >= 0 and math.isfinite(v)):
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
    if args.w_cls == 0 and args.w_mse == 0 and args.w_rank == 0:
        raise UsageError("all loss weights are 0: nothing to train")
    if args.detach_pass and args.w_cls != 0:
        raise UsageError("--detach-pass needs --w-cls 0 (L_cls trains the modules through the frozen model)")
    if args.init is not None and not Path(args.init).is_file():
        raise UsageError(f"--init {args.init}: no such file")
    if args.n_hidden < 0:
        raise UsageError(f"--n-hidden must be >= 0, got {args.n_hidden}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.split(":")[0] not in ("cuda", "cpu"):
        raise UsageError(f"--device must be cuda or cpu, got '{args.device}'")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    out_dir = Path(args.out).resolve().parent
    if not out_dir.is_dir():
        raise UsageError(f"--out {args.out}: folder {out_dir} does not exist")


class Logger:
    def __init__(self, path):
        self.f = open(path, "a") if path else None

    def write(self, rec: dict):
        if self.f:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()


def train(args) -> dict:
    check_args(args)
    t_start = time.time()
    dev = torch.device(args.device)
    if dev.type == "cuda":  # TF32 matmuls for the float32 model
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    try:
        model = load_model(args.model)
    except ModelError as e:
        raise UsageError(str(e)) from None
    c = model.config
    model.to(device=dev, dtype=torch.float32,
             matmul_dtype=torch.bfloat16 if args.dtype == "bfloat16" else torch.float32)
    model.sdpa_dense = dev.type == "cuda"  # fused kernels for the unmasked passes
    plan = Plan(layers=args.layers if args.layers is not None else default_layers(c.n_layer),
                keep_ratios=list(args.keep_ratio), keep_first=args.keep_first, keep_recent=args.keep_recent)
    plan.validate(c.n_layer)
    seqs, data_meta = load_data(args.data, n_vocab=c.n_vocab, n_ctx=c.n_ctx_train)
    train_set = [s for s in seqs if not s.heldout]
    held = [s for s in seqs if s.heldout]
    if not train_set:
        raise UsageError(f"{args.data}: no training sequences (all are held out)")
    if data_meta.get("model.name") and data_meta["model.name"] != c.name:
        print(f"{PROG}: warning: {args.data} was exported for model '{data_meta['model.name']}', "
              f"training for '{c.name}'", file=sys.stderr)
    n_hidden = args.n_hidden or max(1, c.n_embd // 4)
    predictor = Predictor(c.n_embd, n_hidden, len(plan.layers), seed=args.seed)
    if args.init is not None:
        load_predictor_into(predictor, args.init, plan)
    predictor = predictor.to(dev)
    opt = torch.optim.AdamW(predictor.parameters(), lr=args.lr, weight_decay=0.0)
    lopts = LossOptions(w_cls=args.w_cls, w_mse=args.w_mse, w_rank=args.w_rank, tau=args.tau, pairs=args.pairs,
                        detach_pass=args.detach_pass)
    gen = torch.Generator(device=dev).manual_seed(args.seed + 1)  # Gumbel noise and pairs
    order_gen = torch.Generator().manual_seed(args.seed + 2)
    log = Logger(args.log)
    keep = plan.keep_ratios[0] if len(set(plan.keep_ratios)) == 1 else plan.keep_ratios
    print(f"{PROG}: {c.name} ({c.arch}, {c.n_layer} layers, {c.n_embd} wide) on {dev}, matmuls {args.dtype}; "
          f"stages at layers {plan.layers}, keep {keep}; "
          f"{len(train_set)} training / {len(held)} held-out sequences "
          f"({sum(len(s.ids) for s in seqs)} tokens); n_hidden {n_hidden}", file=sys.stderr)

    eval_s = [0.0]  # time spent evaluating during training (left out of seq/s)

    def run_eval(step):
        if not held:
            return None
        t0 = time.time()
        predictor.eval()
        ev = evaluate(model, predictor, held, plan, pairs=args.pairs, seed=args.seed + 3)
        predictor.train()
        log.write({"step": step, "eval": ev, "eval_s": time.time() - t0})
        eval_s[0] += time.time() - t0
        print(f"eval step {step}: kendall_tau {sum(ev['kendall_tau']) / len(plan.layers):.4f} "
              f"topk_overlap {sum(ev['topk_overlap']) / len(plan.layers):.4f} cls {ev['cls']:.4f} "
              f"(dense {ev['cls_dense']:.4f})  [{time.time() - t0:.1f}s]", file=sys.stderr)
        return ev

    ev0 = run_eval(0) if args.eval_every > 0 else None
    eval_s[0] = 0.0
    perm, pos = torch.randperm(len(train_set), generator=order_gen), 0
    t_train = time.time()
    seen = 0
    ev = None
    acc = {"loss": 0.0, "cls": 0.0, "mse": 0.0, "rank": 0.0, "n": 0}  # device tensors between prints
    kept_last = []
    for step in range(1, args.steps + 1):
        lr = lr_at(step, args.steps, args.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        for _ in range(args.batch):
            if pos == len(perm):
                perm, pos = torch.randperm(len(train_set), generator=order_gen), 0
            seq = train_set[int(perm[pos])]
            pos += 1
            sal, h0 = marking_pass(model, seq, plan)
            r = sequence_losses(model, predictor, seq, plan, sal, h0, lopts, gen)
            (r.loss / args.batch).backward()
            acc["loss"] += r.loss.detach()
            acc["cls"] += r.cls
            acc["mse"] += r.mse
            acc["rank"] += r.rank
            acc["n"] += 1
            kept_last = r.kept
            seen += 1
        opt.step()
        if step % args.print_every == 0 or step == args.steps:
            k = acc["n"]
            rec = {"step": step, "loss": float(acc["loss"]) / k, "cls": float(acc["cls"]) / k,
                   "mse": float(acc["mse"]) / k, "rank": float(acc["rank"]) / k, "lr": lr,
                   "kept_share": [round(float(x), 4) for x in kept_last]}  # the float()s wait for the device
            el = time.time() - t_train - eval_s[0]
            rate = seen / el if el > 0 else 0.0
            rec.update(seq_per_s=rate, elapsed_s=el)
            log.write(rec)
            eta = (args.steps - step) * args.batch / rate if rate > 0 else 0.0
            print(f"step {step}/{args.steps}  loss {rec['loss']:.4f} (cls {rec['cls']:.4f} mse {rec['mse']:.4f} "
                  f"rank {rec['rank']:.4f})  lr {lr:.2e}  {rate:.2f} seq/s  ETA {fmt_time(eta)}",
                  file=sys.stderr)
            acc = {"loss": 0.0, "cls": 0.0, "mse": 0.0, "rank": 0.0, "n": 0}
        if args.eval_every > 0 and step % args.eval_every == 0 and step != args.steps:
            run_eval(step)
        if args.max_minutes > 0 and time.time() - t_train >= 60 * args.max_minutes and step < args.steps:
            print(f"{PROG}: --max-minutes {args.max_minutes:g} reached after {step} of {args.steps} steps",
                  file=sys.stderr)
            break
    steps_done = step
    ev = run_eval(steps_done)
    train_s = time.time() - t_train

    info = {"train.command": getattr(args, "command", None) or shlex.join(sys.argv),
            "train.objective": f"L_cls+L_mse+L_r, Gumbel-Softmax mask, weights cls={args.w_cls:g} "
                               f"mse={args.w_mse:g} rank={args.w_rank:g}, tau={args.tau:g}, pairs={args.pairs}, "
                               "hard straight-through keep mask, quantile threshold at the stage's keep ratio",
            "train.data": f"{args.data} ({len(train_set)} training / {len(held)} held-out sequences, "
                          f"{sum(len(s.ids) for s in seqs)} tokens)",
            "train.steps": str(steps_done), "train.steps_planned": str(args.steps),
            "train.batch": str(args.batch), "train.detach_pass": str(bool(args.detach_pass)).lower(),
            "train.init": args.init or "", "train.lr": repr(args.lr), "train.seed": str(args.seed),
            "train.device": str(dev), "train.dtype": args.dtype,
            "train.seconds": f"{train_s:.1f}", "train.trainer": TRAINER, "train.torch": torch.__version__}
    if ev is not None:
        r4 = lambda v: [round(x, 4) if math.isfinite(x) else None for x in v]  # noqa: E731
        info.update({"train.heldout_kendall_tau": r4(ev["kendall_tau"]),
                     "train.heldout_topk_overlap": r4(ev["topk_overlap"]),
                     "train.heldout_rank_loss": r4(ev["rank_loss"]),
                     "train.heldout_cls": f"{ev['cls']:.4f}", "train.heldout_cls_dense": f"{ev['cls_dense']:.4f}",
                     "train.heldout_sequences": str(len(held))})
        if ev0 is not None:
            info["train.heldout_kendall_tau_initial"] = r4(ev0["kendall_tau"])
    else:
        info["train.heldout_sequences"] = "0"
    save_predictor(args.out, model, predictor, plan, info)
    if ev is not None:
        print(eval_table(ev, plan, ev0), file=sys.stderr)
    print(f"{PROG}: wrote {args.out} ({len(plan.layers)} stages) after {steps_done} steps in "
          f"{fmt_time(time.time() - t_start)}", file=sys.stderr)
    return {"eval": ev, "eval_start": ev0, "info": info, "plan": plan}


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    args.command = shlex.join(sys.argv if argv is None else [TRAINER] + list(argv))
    try:
        train(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
