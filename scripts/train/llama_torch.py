"""A small Llama-family model in PyTorch for training SDTP's prediction modules (no transformers).

Owns: loading a GGUF file (gguf-py; quantised tensors dequantised to float32) or a Hugging Face
folder (config.json + safetensors, sharded or not) into one plain set of frozen weights in Hugging
Face layout; a forward pass over one sequence with an optional per-layer key mask (SDTP's training-
time pruning, DynamicViT-style); and the gradient saliency π̂ = (∂T/∂x)·x that is SDTP's target.

Architectures: llama, mistral (same graph) and qwen2 (q/k/v biases). RoPE is the rotate-half
(NeoX) form on Hugging Face layout; llama.cpp's converter permutes the Q/K rows of "llama" GGUF
files for ggml's adjacent-pair RoPE, and the loader undoes that permutation (qwen2 GGUFs are not
permuted). Numerics follow transformers' eager path where it matters for agreement: RoPE angles,
cos and sin in float32 whatever the compute dtype.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F


class ModelError(Exception):
    """A model file or folder that cannot be loaded; the message names the file and the field."""


@dataclass
class ModelConfig:
    arch: str
    name: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    rms_eps: float
    rope_theta: float
    # {"type": "none"} | {"type": "linear", "factor": f} | {"type": "llama3", "factor", "low_freq_factor",
    # "high_freq_factor", "original_max_position"}
    rope_scaling: dict = field(default_factory=lambda: {"type": "none"})
    tied_embeddings: bool = False
    qkv_bias: bool = False


# ----------------------------------------------------------------------------------------------
# RoPE

def rope_inv_freq(c: ModelConfig, freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse frequencies [head_dim/2] in float32, computed as transformers does."""
    hd = c.head_dim
    inv = 1.0 / (c.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).to(torch.float32) / hd))
    rs = c.rope_scaling
    if freq_factors is not None:  # GGUF rope_freqs.weight: llama.cpp divides each frequency by its factor
        inv = inv / freq_factors.to(torch.float32)
    elif rs["type"] == "linear":
        inv = inv / rs["factor"]
    elif rs["type"] == "llama3":
        # transformers' _compute_llama3_parameters
        factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position"]
        low_wavelen, high_wavelen = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv = torch.where(medium, smoothed, inv_l)
    elif rs["type"] != "none":
        raise ModelError(f"rope scaling type '{rs['type']}' is not supported (none, linear, llama3)")
    return inv


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


# ----------------------------------------------------------------------------------------------
# The model

_LAYER_KEYS = ("attn_norm", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "ffn_norm", "w_gate", "w_up", "w_down")
_MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


class LlamaModel:
    """Frozen weights (plain tensors, requires_grad False) and the forward pass.

    weights: {"tok_embd": [V, D], "output_norm": [D], "output": [V, D] (absent when tied),
              "layers": [ {attn_norm, wq [H·hd, D], wk, wv [Hkv·hd, D], wo [D, H·hd], bq?, bk?, bv?,
                           ffn_norm, w_gate [F, D], w_up [F, D], w_down [D, F]} ... ]}
    in Hugging Face layout (Q/K rows ordered for rotate-half RoPE).
    """

    def __init__(self, config: ModelConfig, weights: dict, rope_freq_factors: torch.Tensor | None = None,
                 source: str = ""):
        self.config = config
        self.source = source
        self.rope_freq_factors = rope_freq_factors
        self.w = weights
        self.dtype = torch.float32        # residual stream, norms, softmax
        self.matmul_dtype = torch.float32  # the projections (bfloat16 for speed on a GPU)
        self.device = torch.device("cpu")
        # Unmasked attention through F.scaled_dot_product_attention (fused kernels on a GPU) instead
        # of the explicit softmax; the explicit form is the reference (and bit-equal to an all-ones mask).
        self.sdpa_dense = False
        self._cache = {}
        self._fingerprint = self._compute_fingerprint(weights["tok_embd"].to(torch.float32))
        self.to()

    # --- placement

    def to(self, device=None, dtype=None, matmul_dtype=None) -> "LlamaModel":
        """Moves the weights: norms, biases and embeddings in `dtype`, projection matrices in
        `matmul_dtype` (default: `dtype`). Q/K/V and gate/up are stored fused (one matmul each);
        wq, wk, wv, w_gate, w_up are views into them."""
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        self.matmul_dtype = matmul_dtype or self.dtype

        def mv(t, mat):
            return t.to(device=self.device, dtype=self.matmul_dtype if mat else self.dtype).requires_grad_(False)

        self.w["tok_embd"] = mv(self.w["tok_embd"], False)
        self.w["output_norm"] = mv(self.w["output_norm"], False)
        if "output" in self.w:
            self.w["output"] = mv(self.w["output"], True)
        self._lm_head = self.w["output"] if "output" in self.w else mv(self.w["tok_embd"], True)
        c = self.config
        q, kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        for L in self.w["layers"]:
            for k in [k for k in _LAYER_KEYS if k in L]:
                L[k] = mv(L[k], k in _MATRICES)
            L["wqkv"] = torch.cat([L["wq"], L["wk"], L["wv"]])
            L["wq"], L["wk"], L["wv"] = L["wqkv"][:q], L["wqkv"][q:q + kv], L["wqkv"][q + kv:]
            if "bq" in L:
                L["bqkv"] = torch.cat([L["bq"], L["bk"], L["bv"]])
                L["bq"], L["bk"], L["bv"] = L["bqkv"][:q], L["bqkv"][q:q + kv], L["bqkv"][q + kv:]
            L["w_gu"] = torch.cat([L["w_gate"], L["w_up"]])
            L["w_gate"], L["w_up"] = L["w_gu"][:c.n_ff], L["w_gu"][c.n_ff:]
        self._cache = {}
        return self

    def _compute_fingerprint(self, e: torch.Tensor) -> list[float]:
        rows = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597]
        c = self.config
        cols = min(16, c.n_embd)
        return [float(e[min(r, c.n_vocab - 1), j]) for r in rows for j in range(cols)]

    def fingerprint(self) -> list[float]:
        """The predictor file's model.fingerprint: token-embedding rows {1,2,3,5,...,1597} (clipped to
        the vocabulary) x the first min(16, n_embd) columns of the embedding as loaded (dequantised
        float32), as sdtp's ModelIdentity::of."""
        return list(self._fingerprint)

    # --- pieces

    def _linear(self, x, w, b=None):
        if self.matmul_dtype == self.dtype:
            return F.linear(x, w, b)
        y = F.linear(x.to(self.matmul_dtype), w).to(self.dtype)
        return y if b is None else y + b

    def _rms_norm(self, x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_eps))

    def _rope(self, positions: torch.Tensor):
        """cos, sin [T, 1, head_dim] for rotate-half RoPE at `positions`."""
        inv = rope_inv_freq(self.config, self.rope_freq_factors).to(positions.device)
        ang = positions.to(torch.float32)[:, None] * inv[None, :]  # float32, as transformers
        emb = torch.cat((ang, ang), dim=-1)[:, None, :]
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def _cached(self, what, T, device, make):
        k = (what, T, str(device), self.dtype)
        if k not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[k] = make()
        return self._cache[k]

    def mask_matrix(self, key_mask: torch.Tensor) -> torch.Tensor:
        """[T, T] key weights of a key mask M [T]: M_j in every row, 1 on the diagonal. A boolean M
        gives a boolean matrix (keys kept exactly or removed exactly, no gradient)."""
        T = key_mask.shape[0]
        eye = self._cached("eye", T, key_mask.device, lambda: torch.eye(T, dtype=torch.bool, device=key_mask.device))
        if key_mask.dtype == torch.bool:
            return eye | key_mask[None, :]
        return torch.where(eye, torch.ones((), dtype=self.dtype, device=key_mask.device),
                           key_mask.to(self.dtype)[None, :])

    def _attention(self, L, x, cos, sin, mask_matrix):
        """Causal self-attention of one sequence x [T, D]. With a key mask M [T] (values in [0, 1],
        given as mask_matrix(M)): p_ij = M_j·exp(s_ij) / Σ_k M_k·exp(s_ik) over keys j ≤ i, the
        diagonal always kept (M_ii = 1), DynamicViT's masked softmax. Computed as q = softmax(s) over
        the causal keys, q·M renormalised; never through log M, which would kill the gradient of M
        where M = 0. The dense explicit path renormalises too, so an all-ones mask (a multiply by
        exactly 1) gives the dense result bit for bit."""
        c = self.config
        T = x.shape[0]
        H, Hkv, hd = c.n_head, c.n_head_kv, c.head_dim
        qkv = self._linear(x, L["wqkv"], L.get("bqkv")).view(T, H + 2 * Hkv, hd)
        qk = qkv[:, :H + Hkv]
        qk = qk * cos + rotate_half(qk) * sin
        q = qk[:, :H].transpose(0, 1) * hd ** -0.5
        k, v = qk[:, H:].transpose(0, 1), qkv[:, H + Hkv:].transpose(0, 1)
        rep = H // Hkv
        mm = self.matmul_dtype

        def cast(t):  # to the matmul dtype (nothing to do for float32 matmuls)
            return t if t.dtype == mm else t.to(mm)

        boolean = mask_matrix is not None and mask_matrix.dtype == torch.bool
        if self.sdpa_dense and (mask_matrix is None or boolean):
            # GQA: query head h uses kv head h // rep (transformers' repeat_kv)
            ke = k[:, None].expand(Hkv, rep, T, hd).reshape(H, T, hd)
            ve = v[:, None].expand(Hkv, rep, T, hd).reshape(H, T, hd)
            if boolean:  # removed keys: the fused kernel with a boolean mask (True = attend)
                causal = self._cached("causal", T, x.device,
                                      lambda: torch.ones(T, T, dtype=torch.bool, device=x.device).tril())
                o = F.scaled_dot_product_attention(cast(q), cast(ke), cast(ve), attn_mask=causal & mask_matrix,
                                                   scale=1.0)
            else:
                o = F.scaled_dot_product_attention(cast(q), cast(ke), cast(ve), is_causal=True, scale=1.0)
            o = o.to(self.dtype).transpose(0, 1).reshape(T, H * hd)
            return self._linear(o, L["wo"])
        q = q.reshape(Hkv, rep, T, hd)  # GQA by broadcasting over the rep query heads of a kv head
        s = torch.matmul(cast(q), cast(k[:, None].transpose(-1, -2))).to(self.dtype)
        causal = self._cached("causal", T, x.device, lambda: torch.ones(T, T, dtype=torch.bool, device=x.device).tril())
        p = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=-1)
        if mask_matrix is not None:
            p = p * (mask_matrix.to(p.dtype) if boolean else mask_matrix)
        # Z >= the kept diagonal's share > 0 except on float underflow; the clamp only guards that case
        p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        o = torch.matmul(cast(p), cast(v[:, None])).to(self.dtype)  # [Hkv, rep, T, hd]
        o = o.reshape(H, T, hd).transpose(0, 1).reshape(T, H * hd)
        return self._linear(o, L["wo"])

    def _mlp(self, L, x):
        gate, up = self._linear(x, L["w_gu"]).chunk(2, dim=-1)
        return self._linear(F.silu(gate) * up, L["w_down"])

    def block(self, l: int, h: torch.Tensor, cos, sin, key_mask=None, mask_matrix=None) -> torch.Tensor:
        """Block l on h [T, D]; key_mask M [T] (or its precomputed mask_matrix) masks the attention."""
        L = self.w["layers"][l]
        if mask_matrix is None and key_mask is not None:
            mask_matrix = self.mask_matrix(key_mask)
        h = h + self._attention(L, self._rms_norm(h, L["attn_norm"]), cos, sin, mask_matrix)
        return h + self._mlp(L, self._rms_norm(h, L["ffn_norm"]))

    def logits_of(self, h: torch.Tensor) -> torch.Tensor:
        return self._linear(self._rms_norm(h, self.w["output_norm"]), self._lm_head)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.w["tok_embd"][ids].to(self.dtype)

    # --- forward

    def forward(self, ids: torch.Tensor, *, positions: torch.Tensor | None = None, key_masks: dict | None = None,
                on_layer=None, capture=(), logit_rows=None, input_requires_grad: bool = False,
                start_layer: int = 0, hidden: torch.Tensor | None = None, until: int | None = None):
        """One sequence ids [T] (int64). Returns (logits [R, V] for rows `logit_rows` (all when None;
        an empty list skips the head), {layer: hidden state entering that layer} for `capture`).

        positions: RoPE positions [T] (default 0..T-1).
        key_masks: {layer: M [T]}: the key mask of layer l is key_masks[max key <= l] (None below the
          first key = dense).
        on_layer(l, h) -> M or None: called with the hidden state entering each layer; a tensor it
          returns becomes the key mask from layer l on (SDTP's pruning stages).
        input_requires_grad: the embeddings (or `hidden`) become a leaf that needs grad, so gradients
          with respect to the captured hidden states exist (saliency).
        start_layer, hidden: start at block start_layer from `hidden` [T, D] instead of the embeddings.
        until: stop before block `until` (returns no logits; capture `until` to get its input).
        """
        c = self.config
        T = ids.shape[0]
        if positions is None:
            cos, sin = self._cached("rope", T, ids.device, lambda: self._rope(torch.arange(T, device=ids.device)))
        else:
            cos, sin = self._rope(positions)
        h = self.embed(ids) if hidden is None else hidden.to(self.dtype)
        if hidden is not None and hidden.shape[0] != T:
            raise ValueError(f"hidden has {hidden.shape[0]} rows for {T} ids")
        if input_requires_grad:
            h = h.detach().requires_grad_(True)
        mask = None
        if key_masks:
            below = [l for l in key_masks if l <= start_layer]
            mask = self.mask_matrix(key_masks[max(below)]) if below else None
        captured = {}
        for l in range(start_layer, c.n_layer):
            if l == until:
                if l in capture:
                    captured[l] = h
                return None, captured
            if key_masks and l in key_masks and l != start_layer:
                mask = self.mask_matrix(key_masks[l])
            if on_layer is not None:
                m = on_layer(l, h)
                if m is not None:
                    mask = self.mask_matrix(m)
            if l in capture:
                captured[l] = h
            h = self.block(l, h, cos, sin, mask_matrix=mask)
        if logit_rows is not None:
            if len(logit_rows) == 0:
                return None, captured
            h = h[logit_rows]
        return self.logits_of(h), captured


# ----------------------------------------------------------------------------------------------
# Saliency

def saliency(model: LlamaModel, ids: torch.Tensor, layers, t: int | None = None,
             hidden: torch.Tensor | None = None):
    """SDTP's target π̂ = (∂T/∂x)·x summed over the hidden dimension (one signed number per token) at
    the hidden state x entering each layer in `layers`, with T = log_softmax(logits[t])[argmax
    logits[t]], t the last prompt position (default: the last row). The same definition as sdtp's
    `last_logprob` saliency (src/train/saliency.h). Only rows 0..t affect T (causal), so the pass runs
    on ids[:t+1]; the weights get no gradient. `hidden`: the hidden state entering min(layers) when
    the caller has it (rows beyond t are ignored).

    Returns ({layer: π̂ [t+1]}, T (float), predicted token)."""
    layers = sorted(set(int(l) for l in layers))
    if t is None:
        t = ids.shape[0] - 1
    ids = ids[: t + 1]
    first = layers[0]
    if hidden is None:
        with torch.no_grad():
            _, hs = model.forward(ids, capture=[first], until=first)
        hidden = hs[first]
    with torch.enable_grad():
        logits, hs = model.forward(ids, capture=layers, logit_rows=[t], input_requires_grad=True,
                                   start_layer=first, hidden=hidden[: t + 1])
        z = logits[0]
        a = int(torch.argmax(z.detach()))
        obj = torch.log_softmax(z, dim=-1)[a]
        grads = torch.autograd.grad(obj, [hs[l] for l in layers])
    out = {l: (g * hs[l].detach()).sum(-1).detach() for l, g in zip(layers, grads)}
    return out, float(obj.detach()), a


def objective_from_layer(model: LlamaModel, ids: torch.Tensor, layer: int, hidden: torch.Tensor, token: int,
                         t: int | None = None) -> torch.Tensor:
    """T with the hidden state entering `layer` replaced by `hidden` (finite-difference checks)."""
    if t is None:
        t = ids.shape[0] - 1
    logits, _ = model.forward(ids[: t + 1], start_layer=layer, hidden=hidden[: t + 1], logit_rows=[t])
    return torch.log_softmax(logits[0], dim=-1)[token]


# ----------------------------------------------------------------------------------------------
# Loading

def load_model(path: str | Path) -> LlamaModel:
    """A GGUF file or a Hugging Face folder (config.json + model.safetensors or sharded)."""
    p = Path(path)
    if p.is_dir():
        return load_hf(p)
    if not p.exists():
        raise ModelError(f"{p}: no such file or folder")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return load_gguf(p)
    raise ModelError(f"{p}: neither a GGUF file nor a Hugging Face folder")


def _check_shape(src, name, t, shape):
    if tuple(t.shape) != tuple(shape):
        raise ModelError(f"{src}: tensor '{name}' has shape {list(t.shape)}, expected {list(shape)}")


def _assemble(c: ModelConfig, get, names, src) -> dict:
    """weights dict from get(name) -> float32 tensor or None, with `names` the file's tensor names."""
    D, V, Fd = c.n_embd, c.n_vocab, c.n_ff
    q, kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim

    def need(name, shape):
        t = get(name)
        if t is None:
            raise ModelError(f"{src}: missing tensor '{name}'")
        _check_shape(src, name, t, shape)
        return t

    w = {"tok_embd": need(names["tok_embd"], (V, D)), "output_norm": need(names["output_norm"], (D,)), "layers": []}
    if not c.tied_embeddings:
        w["output"] = need(names["output"], (V, D))
    for i in range(c.n_layer):
        n = lambda k: names["layer"](i, k)  # noqa: E731
        L = {"attn_norm": need(n("attn_norm"), (D,)), "wq": need(n("wq"), (q, D)), "wk": need(n("wk"), (kv, D)),
             "wv": need(n("wv"), (kv, D)), "wo": need(n("wo"), (D, q)), "ffn_norm": need(n("ffn_norm"), (D,)),
             "w_gate": need(n("w_gate"), (Fd, D)), "w_up": need(n("w_up"), (Fd, D)),
             "w_down": need(n("w_down"), (D, Fd))}
        if c.qkv_bias:
            L.update(bq=need(n("bq"), (q,)), bk=need(n("bk"), (kv,)), bv=need(n("bv"), (kv,)))
        w["layers"].append(L)
    return w


_HF_LAYER = {"attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight",
             "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
             "bq": "self_attn.q_proj.bias", "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias",
             "ffn_norm": "post_attention_layernorm.weight", "w_gate": "mlp.gate_proj.weight",
             "w_up": "mlp.up_proj.weight", "w_down": "mlp.down_proj.weight"}
_GGUF_LAYER = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight",
               "wv": "attn_v.weight", "wo": "attn_output.weight", "bq": "attn_q.bias", "bk": "attn_k.bias",
               "bv": "attn_v.bias", "ffn_norm": "ffn_norm.weight", "w_gate": "ffn_gate.weight",
               "w_up": "ffn_up.weight", "w_down": "ffn_down.weight"}


def _hf_rope(cfg: dict, src: str, n_ctx: int):
    theta = float(cfg.get("rope_theta", 10000.0))
    rp = cfg.get("rope_scaling")
    if rp is None:
        rp = cfg.get("rope_parameters")
    if rp is None:
        return theta, {"type": "none"}
    if not isinstance(rp, dict):
        raise ModelError(f"{src}: rope_scaling must be an object, got {rp!r}")
    theta = float(rp.get("rope_theta", theta))
    typ = rp.get("rope_type", rp.get("type", "default"))
    if float(rp.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ModelError(f"{src}: partial rotary embeddings are not supported")

    def req(k):
        if k not in rp:
            raise ModelError(f"{src}: missing field 'rope_scaling.{k}' for rope type '{typ}'")
        return float(rp[k])

    if typ == "default":
        return theta, {"type": "none"}
    if typ == "linear":
        return theta, {"type": "linear", "factor": req("factor")}
    if typ == "llama3":
        return theta, {"type": "llama3", "factor": req("factor"), "low_freq_factor": req("low_freq_factor"),
                       "high_freq_factor": req("high_freq_factor"),
                       "original_max_position": int(rp.get("original_max_position_embeddings", n_ctx))}
    raise ModelError(f"{src}: rope type '{typ}' is not supported (default, linear, llama3)")


def load_hf(folder: Path) -> LlamaModel:
    from safetensors import safe_open

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise ModelError(f"{folder}: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{cfg_path}: not JSON ({e})") from None
    arch = cfg.get("model_type")
    if arch not in ("llama", "mistral", "qwen2"):
        raise ModelError(f"{cfg_path}: model_type {arch!r} is not supported (llama, mistral, qwen2)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{cfg_path}: hidden_act {cfg['hidden_act']!r} is not supported (silu)")
    if arch == "qwen2" and cfg.get("use_sliding_window", False):
        raise ModelError(f"{cfg_path}: sliding-window attention is not supported")
    if arch == "llama" and cfg.get("mlp_bias", False):
        raise ModelError(f"{cfg_path}: MLP biases are not supported")
    try:
        n_head = int(cfg["num_attention_heads"])
        n_embd = int(cfg["hidden_size"])
        n_ctx = int(cfg.get("max_position_embeddings", {"llama": 2048, "mistral": 131072}.get(arch, 32768)))
        theta, scaling = _hf_rope(cfg, str(cfg_path), n_ctx)
        head_dim = cfg.get("head_dim") or n_embd // n_head
        c = ModelConfig(arch=arch, name=folder.resolve().name, n_vocab=int(cfg["vocab_size"]), n_embd=n_embd,
                        n_layer=int(cfg["num_hidden_layers"]), n_head=n_head,
                        n_head_kv=int(cfg.get("num_key_value_heads", 8 if arch == "mistral" else n_head)),
                        head_dim=int(head_dim), n_ff=int(cfg["intermediate_size"]), n_ctx_train=n_ctx,
                        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
                        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                        qkv_bias=arch == "qwen2" or bool(cfg.get("attention_bias", False)))
    except KeyError as e:
        raise ModelError(f"{cfg_path}: missing required field {e}") from None

    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise ModelError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for fn in files:
        with safe_open(str(folder / fn), framework="pt") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)

    def get(name):
        t = tensors.get(name)
        return None if t is None else t.to(torch.float32)

    names = {"tok_embd": "model.embed_tokens.weight", "output_norm": "model.norm.weight", "output": "lm_head.weight",
             "layer": lambda i, k: f"model.layers.{i}.{_HF_LAYER[k]}"}
    if c.tied_embeddings is False and "lm_head.weight" not in tensors:
        raise ModelError(f"{folder}: tie_word_embeddings is false but there is no lm_head.weight")
    return LlamaModel(c, _assemble(c, get, names, str(folder)), source=str(folder))


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undoes llama.cpp's Q/K row interleave (convert_hf_to_gguf.py's LlamaModel.permute): within each
    head of hd rows, GGUF row 2i+j holds Hugging Face row j·hd/2+i."""
    rows = w.shape[0]
    hd = rows // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, hd // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def load_gguf(path: Path) -> LlamaModel:
    try:
        import gguf
        from gguf.quants import dequantize
    except ImportError:
        raise ModelError(f"{path}: reading GGUF needs gguf-py (pip install gguf, or put llama.cpp's "
                         "gguf-py on PYTHONPATH)") from None
    src = str(path)
    r = gguf.GGUFReader(src)

    def meta(key, default=None, required=False):
        f = r.fields.get(key)
        if f is None:
            if required:
                raise ModelError(f"{src}: missing metadata '{key}'")
            return default
        return f.contents()

    arch = meta("general.architecture", required=True)
    if arch not in ("llama", "qwen2"):
        raise ModelError(f"{src}: general.architecture '{arch}' is not supported (llama, qwen2)")
    a = arch + "."
    tensors = {t.name: t for t in r.tensors}
    n_embd = int(meta(a + "embedding_length", required=True))
    n_head = int(meta(a + "attention.head_count", required=True))
    head_dim = int(meta(a + "attention.key_length", n_embd // n_head))
    if int(meta(a + "rope.dimension_count", head_dim)) != head_dim:
        raise ModelError(f"{src}: partial rotary embeddings ({a}rope.dimension_count) are not supported")
    n_vocab = meta(a + "vocab_size")
    if n_vocab is None:
        toks = r.fields.get("tokenizer.ggml.tokens")
        n_vocab = len(toks.data) if toks is not None else int(tensors["token_embd.weight"].shape[1])
    scaling = {"type": "none"}
    st = meta(a + "rope.scaling.type", "none")
    if st == "linear":
        scaling = {"type": "linear", "factor": float(meta(a + "rope.scaling.factor", required=True))}
    elif st != "none":
        raise ModelError(f"{src}: {a}rope.scaling.type '{st}' is not supported (none, linear)")
    elif meta(a + "rope.scale_linear", 1.0) != 1.0:
        scaling = {"type": "linear", "factor": float(meta(a + "rope.scale_linear"))}
    eps = meta(a + "attention.layer_norm_rms_epsilon", required=True)
    c = ModelConfig(arch=arch, name=str(meta("general.name", path.stem)), n_vocab=int(n_vocab), n_embd=n_embd,
                    n_layer=int(meta(a + "block_count", required=True)), n_head=n_head,
                    n_head_kv=int(meta(a + "attention.head_count_kv", n_head)), head_dim=head_dim,
                    n_ff=int(meta(a + "feed_forward_length", required=True)),
                    n_ctx_train=int(meta(a + "context_length", required=True)), rms_eps=float(eps),
                    rope_theta=float(meta(a + "rope.freq_base", 10000.0)), rope_scaling=scaling,
                    tied_embeddings="output.weight" not in tensors,
                    qkv_bias=arch == "qwen2" or "blk.0.attn_q.bias" in tensors)

    def get(name):
        t = tensors.get(name)
        if t is None:
            return None
        x = dequantize(t.data, t.tensor_type)
        x = torch.from_numpy(x.astype("float32", copy=False).reshape(tuple(reversed(t.shape.tolist()))).copy())
        # "llama" GGUFs have Q/K rows permuted for ggml's adjacent-pair RoPE; qwen2 ones keep NeoX layout
        if arch == "llama":
            leaf = name.rsplit(".", 2)
            if len(leaf) == 3 and leaf[1] in ("attn_q", "attn_k"):
                x = unpermute_qk(x, c.n_head if leaf[1] == "attn_q" else c.n_head_kv)
        return x

    names = {"tok_embd": "token_embd.weight", "output_norm": "output_norm.weight", "output": "output.weight",
             "layer": lambda i, k: f"blk.{i}.{_GGUF_LAYER[k]}"}
    freq = None
    if "rope_freqs.weight" in tensors:
        if scaling["type"] != "none":
            raise ModelError(f"{src}: both rope_freqs.weight and {a}rope.scaling.type are set")
        freq = get("rope_freqs.weight")
        scaling = {"type": "rope_freqs"}
        c.rope_scaling = scaling
    m = LlamaModel(c, _assemble(c, get, names, src), rope_freq_factors=freq, source=src)
    return m
