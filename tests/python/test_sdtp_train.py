"""Tests of scripts/train (the PyTorch SDTP trainer): the torch model against Hugging Face references
nobody here wrote (tests/fixtures/tiny, tests/fixtures/saliency, tests/fixtures/smollm2), the
masked forward against physically removed keys, every loss term's gradient against finite
differences, the predictor file's layout, and a short training run that must learn a learnable
ranking. CPU only, small; run with
    /work/torchvenv/bin/python -m pytest tests/python -q
"""
import json
import math
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the trainer tests need it")
np = pytest.importorskip("numpy")
pytest.importorskip("safetensors", reason="safetensors is not installed")

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "train"))

import llama_torch as lt  # noqa: E402
import sdtp_train as st  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_num_threads(2)

FIXTURES = REPO / "tests" / "fixtures"
if not (FIXTURES / "tiny").exists():  # the fixtures live in the main tree; a worktree may lack them
    FIXTURES = Path(os.environ.get("SDTP_FIXTURES", "/work/main/tests/fixtures"))
TINY = FIXTURES / "tiny"
SMOL_GGUF = Path(os.environ.get("SDTP_TEST_GGUF") or os.environ.get("SDTP_MODEL") or
                 Path.home() / ".cache" / "sdtp" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")

needs_fixtures = pytest.mark.skipif(not TINY.exists(), reason=f"no tiny fixtures at {TINY}")


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# ----------------------------------------------------------------------------------------------
# Tiny models built here

def tiny_model(V=40, D=16, L=3, H=4, Hkv=2, Fd=32, seed=0, qkv_bias=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hd = D // H
    c = lt.ModelConfig(arch="qwen2" if qkv_bias else "llama", name="tiny-test", n_vocab=V, n_embd=D, n_layer=L,
                       n_head=H, n_head_kv=Hkv, head_dim=hd, n_ff=Fd, n_ctx_train=256, rms_eps=1e-5,
                       rope_theta=10000.0, qkv_bias=qkv_bias)
    r = lambda *s, k=0.3: k * torch.randn(*s, generator=g)  # noqa: E731
    w = {"tok_embd": r(V, D, k=1.0), "output_norm": 1 + r(D, k=0.1), "output": r(V, D, k=0.5), "layers": []}
    for _ in range(L):
        layer = {"attn_norm": 1 + r(D, k=0.1), "wq": r(H * hd, D, k=0.5), "wk": r(Hkv * hd, D, k=0.5),
                 "wv": r(Hkv * hd, D), "wo": r(D, H * hd), "ffn_norm": 1 + r(D, k=0.1), "w_gate": r(Fd, D),
                 "w_up": r(Fd, D), "w_down": r(D, Fd)}
        if qkv_bias:
            layer.update(bq=r(H * hd), bk=r(Hkv * hd), bv=r(Hkv * hd))
        w["layers"].append(layer)
    return lt.LlamaModel(c, w).to(dtype=dtype)


def write_marker_model(folder, V=64, D=32, L=4, H=4, Hkv=2, Fd=64, seed=0, gamma=3.0):
    """An HF folder whose saliency is learnable from the hidden state: each token id has a fixed
    'salience' alpha (embedding dim 0) that every query attends to (the slowest RoPE pair, nearly
    position-free), so tokens with a large alpha steer the prediction."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    hd = D // H
    cfg = {"model_type": "llama", "vocab_size": V, "hidden_size": D, "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": Hkv, "intermediate_size": Fd,
           "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "hidden_act": "silu"}
    (folder / "config.json").write_text(json.dumps(cfg))
    E = 0.5 * torch.randn(V, D, generator=g)
    E[:, 0] = 3.0 * torch.rand(V, generator=g)
    E[:, 1] = 2.0
    t = {"model.embed_tokens.weight": E, "model.norm.weight": 1 + 0.1 * torch.randn(D, generator=g),
         "lm_head.weight": 0.5 * torch.randn(V, D, generator=g)}
    j = hd // 2 - 1
    for i in range(L):
        p = f"model.layers.{i}."
        wq, wk = 0.1 * torch.randn(H * hd, D, generator=g), 0.1 * torch.randn(Hkv * hd, D, generator=g)
        wq[torch.arange(H) * hd + j, 1] = gamma
        wk[torch.arange(Hkv) * hd + j, 0] = gamma
        t.update({p + "input_layernorm.weight": torch.ones(D), p + "post_attention_layernorm.weight": torch.ones(D),
                  p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk,
                  p + "self_attn.v_proj.weight": 0.3 * torch.randn(Hkv * hd, D, generator=g),
                  p + "self_attn.o_proj.weight": 0.3 * torch.randn(D, H * hd, generator=g),
                  p + "mlp.gate_proj.weight": 0.1 * torch.randn(Fd, D, generator=g),
                  p + "mlp.up_proj.weight": 0.1 * torch.randn(Fd, D, generator=g),
                  p + "mlp.down_proj.weight": 0.1 * torch.randn(D, Fd, generator=g)})
    save_file(t, str(folder / "model.safetensors"))


def write_random_data(path, V, n_train=40, n_held=8, lo=24, hi=40, answer=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for k in range(n_train + n_held):
        n = int(torch.randint(lo, hi + 1, (1,), generator=g))
        seqs.append((torch.randint(3, V, (n,), generator=g).tolist(), n - answer, k >= n_train, f"random {k}"))
    st.write_data(str(path), seqs, "marker")


# ----------------------------------------------------------------------------------------------
# The model against Hugging Face

TINY_VARIANTS = ["llama_gqa", "qwen2_bias", "llama_tied_bf16", "llama3_rope", "llama3_rope_oldstyle",
                 "llama_rope_linear", "llama_head_dim", "mistral_f16", "llama_sharded"]


@needs_fixtures
@pytest.mark.parametrize("variant", TINY_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_match_transformers(variant, dtype):
    folder = TINY / variant
    ref = json.loads((folder / "reference.json").read_text())
    m = lt.load_model(folder).to(dtype=dtype)
    exp = ref["expected_config"]
    c = m.config
    assert (c.arch, c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_ff) == \
        (exp["arch"], exp["n_vocab"], exp["n_embd"], exp["n_layer"], exp["n_head"], exp["n_head_kv"],
         exp["head_dim"], exp["n_ff"])
    assert c.tied_embeddings == exp["tied_embeddings"] and c.qkv_bias == exp["qkv_bias"]
    for s in ref["sequences"]:
        want = np.fromfile(folder / s["logits_file"], dtype="<f4").reshape(s["shape"])
        with torch.no_grad():
            got, _ = m.forward(torch.tensor(s["ids"]))
        # measured: <= 1.6e-6 of max|logit| (the float32 reference's own rounding: f32_vs_f64_max_rel ~1e-6)
        assert rel_err(got.numpy(), want) < 5e-6, variant


@needs_fixtures
@pytest.mark.parametrize("variant", ["llama_gqa", "qwen2_bias"])
def test_saliency_matches_transformers_autograd(variant):
    ref = json.loads((FIXTURES / "saliency" / f"{variant}.json").read_text())
    m = lt.load_model(TINY / variant).to(dtype=torch.float64)
    for p in ref["prompts"]:
        r = p["objectives"]["last_logprob"]
        sal, obj, tok = lt.saliency(m, torch.tensor(p["ids"]), ref["layers"])
        assert tok == r["predicted_token"]
        assert abs(obj - r["objective"]) < 1e-5
        for l in ref["layers"]:
            # measured <= 3.1e-6 of max|π̂|: transformers' "float64" reference keeps RoPE, RMS norm and
            # softmax in float32 internally
            assert rel_err(sal[l].numpy(), r["layers"][str(l)]["sum"]) < 2e-5, (variant, l)


@pytest.fixture(scope="module")
def smollm2():
    if not SMOL_GGUF.exists():
        pytest.skip(f"SmolLM2 GGUF not found at {SMOL_GGUF} (set SDTP_TEST_GGUF)")
    pytest.importorskip("gguf", reason="gguf-py is not installed")
    return lt.load_model(SMOL_GGUF)


def test_smollm2_gguf_saliency_and_logits(smollm2):
    m = smollm2
    c = m.config
    assert (c.arch, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_vocab) == ("llama", 30, 576, 9, 3, 49152)
    # last-position logits of transformers on the same dequantised weights (float32 reference)
    lref = json.loads((FIXTURES / "smollm2" / "reference.json").read_text())
    for pr in [lref["prompts"][i] for i in (0, 1, 3)]:
        want = np.fromfile(FIXTURES / "smollm2" / pr["last_logits_file"], dtype="<f4")
        with torch.no_grad():
            got, _ = m.forward(torch.tensor(pr["ids"]), logit_rows=[len(pr["ids"]) - 1])
        assert rel_err(got[0].numpy(), want) < 1e-5  # measured <= 2.1e-6 (float32 both, 30 layers)
    m.to(dtype=torch.float64)
    ref = json.loads((FIXTURES / "saliency" / "smollm2.json").read_text())
    p = ref["prompts"][0]
    r = p["objectives"]["last_logprob"]
    sal, obj, tok = lt.saliency(m, torch.tensor(p["ids"]), ref["layers"])
    assert tok == r["predicted_token"]
    assert abs(obj - r["objective"]) < 1e-5
    for l in ref["layers"]:
        assert rel_err(sal[l].numpy(), r["layers"][str(l)]["sum"]) < 1e-5, l  # measured <= 9.7e-7


def _gguf_from_hf(folder, path, quantise_ffn=False):
    """Writes an HF fixture as GGUF the way llama.cpp's converter does (Q/K rows of llama models
    permuted for ggml's RoPE)."""
    gguf = pytest.importorskip("gguf", reason="gguf-py is not installed")
    m = lt.load_model(folder)
    c = m.config
    arch = "qwen2" if c.arch == "qwen2" else "llama"

    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_name("tiny-gguf")
    wr.add_context_length(c.n_ctx_train)
    wr.add_embedding_length(c.n_embd)
    wr.add_block_count(c.n_layer)
    wr.add_feed_forward_length(c.n_ff)
    wr.add_head_count(c.n_head)
    wr.add_head_count_kv(c.n_head_kv)
    wr.add_rope_freq_base(c.rope_theta)
    wr.add_layer_norm_rms_eps(c.rms_eps)
    wr.add_vocab_size(c.n_vocab)
    W = m.w

    def add(name, t, quant=False):
        a = t.detach().to(torch.float32).numpy()
        if quant:
            wr.add_tensor(name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            wr.add_tensor(name, a)

    add("token_embd.weight", W["tok_embd"])
    add("output_norm.weight", W["output_norm"])
    if "output" in W:
        add("output.weight", W["output"])
    for i, L in enumerate(W["layers"]):
        q, k = L["wq"], L["wk"]
        bq, bk = L.get("bq"), L.get("bk")
        if arch == "llama":
            q, k = permute(q, c.n_head), permute(k, c.n_head_kv)
        for key, t in (("attn_norm.weight", L["attn_norm"]), ("attn_q.weight", q), ("attn_k.weight", k),
                       ("attn_v.weight", L["wv"]), ("attn_output.weight", L["wo"]),
                       ("ffn_norm.weight", L["ffn_norm"])):
            add(f"blk.{i}.{key}", t)
        for key in ("ffn_gate", "ffn_up", "ffn_down"):
            add(f"blk.{i}.{key}.weight", L[{"ffn_gate": "w_gate", "ffn_up": "w_up", "ffn_down": "w_down"}[key]],
                quant=quantise_ffn)
        if bq is not None:
            add(f"blk.{i}.attn_q.bias", bq)
            add(f"blk.{i}.attn_k.bias", bk)
            add(f"blk.{i}.attn_v.bias", L["bv"])
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


@needs_fixtures
@pytest.mark.parametrize("variant,quant", [("llama_gqa", False), ("llama_gqa", True), ("qwen2_bias", False)])
def test_gguf_loader_undoes_the_qk_permutation(tmp_path, variant, quant):
    """A GGUF written from an HF fixture (llama: Q/K permuted as llama.cpp does; qwen2: not) gives
    transformers' logits; with Q8_0 FFN weights, within the quantisation error."""
    path = tmp_path / f"{variant}.gguf"
    _gguf_from_hf(TINY / variant, path, quantise_ffn=quant)
    m = lt.load_model(path)
    assert m.config.name == "tiny-gguf"
    ref = json.loads((TINY / variant / "reference.json").read_text())
    s = ref["sequences"][1]
    want = np.fromfile(TINY / variant / s["logits_file"], dtype="<f4").reshape(s["shape"])
    with torch.no_grad():
        got, _ = m.forward(torch.tensor(s["ids"]))
    assert rel_err(got.numpy(), want) < (2e-2 if quant else 5e-6)


# ----------------------------------------------------------------------------------------------
# Masked forward

def test_all_ones_mask_equals_dense_exactly():
    m = tiny_model()
    ids = torch.randint(0, 40, (13,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense, _ = m.forward(ids)
        ones, _ = m.forward(ids, key_masks={0: torch.ones(13, dtype=torch.float64)})
    assert torch.equal(dense, ones)


def test_sdpa_dense_path_equals_explicit():
    """The fused unmasked attention (used on a GPU) agrees with the explicit softmax, saliency too."""
    m = tiny_model(L=3)
    ids = torch.randint(0, 40, (19,), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        ref, _ = m.forward(ids)
    sal_ref, _, _ = lt.saliency(m, ids, [0, 2])
    m.sdpa_dense = True
    try:
        with torch.no_grad():
            got, _ = m.forward(ids)
        sal, _, _ = lt.saliency(m, ids, [0, 2])
    finally:
        m.sdpa_dense = False
    assert rel_err(got.numpy(), ref.numpy()) < 1e-12
    assert all(rel_err(sal[l].numpy(), sal_ref[l].numpy()) < 1e-10 for l in (0, 2))


def removed_keys_reference(m, ids, stages):
    """Runs the model with the masked keys physically removed: at each (layer, keep) stage the kept
    rows are gathered, and the blocks run on them with their original positions for RoPE."""
    h = m.embed(ids)
    rows = torch.arange(ids.shape[0])
    stage = dict(stages)
    for l in range(m.config.n_layer):
        if l in stage:
            keep = stage[l][rows] > 0.5
            h, rows = h[keep], rows[keep]
        cos, sin = m._rope(rows)
        h = m.block(l, h, cos, sin)
    return m.logits_of(h), rows


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_hard_mask_equals_removed_keys(qkv_bias):
    m = tiny_model(L=4, qkv_bias=qkv_bias)
    n = 17
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 40, (n,), generator=g)
    m1 = (torch.rand(n, generator=g) > 0.3).to(torch.float64)
    m2 = m1 * (torch.rand(n, generator=g) > 0.3).to(torch.float64)
    m1[-1] = m2[-1] = 1.0
    with torch.no_grad():
        masked, _ = m.forward(ids, key_masks={1: m1, 3: m2})
        ref, rows = removed_keys_reference(m, ids, [(1, m1), (3, m2)])
    assert rows.numel() < n - 3
    assert rel_err(masked[rows].numpy(), ref.numpy()) < 1e-12


# ----------------------------------------------------------------------------------------------
# Gradients against finite differences (float64)

def test_saliency_against_finite_differences():
    m = tiny_model(L=3)
    ids = torch.randint(0, 40, (11,), generator=torch.Generator().manual_seed(3))
    layers = [0, 1, 2]
    sal, obj, tok = lt.saliency(m, ids, layers)
    with torch.no_grad():
        _, hs = m.forward(ids, capture=layers, logit_rows=[])
    eps = 1e-6
    for l in layers:
        x = hs[l]
        # π̂_i is the derivative of T along scaling token i's hidden state: d/dε T(x_i (1 + ε))
        fd = []
        for i in range(ids.shape[0]):
            xp, xm = x.clone(), x.clone()
            xp[i] *= 1 + eps
            xm[i] *= 1 - eps
            with torch.no_grad():
                tp = float(lt.objective_from_layer(m, ids, l, xp, tok))
                tm = float(lt.objective_from_layer(m, ids, l, xm, tok))
            fd.append((tp - tm) / (2 * eps))
        assert rel_err(sal[l].numpy(), fd) < 1e-6, l
    # and the whole gradient ∂T/∂x at a middle layer, by gradcheck
    x0 = hs[1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h: lt.objective_from_layer(m, ids, 1, h, tok), (x0,), fast_mode=True)
    assert abs(obj - float(lt.objective_from_layer(m, ids, 0, hs[0], tok))) < 1e-12


@pytest.fixture(scope="module")
def grad_setup():
    m = tiny_model(L=3, D=16, H=4, Hkv=2)
    plan = st.Plan(layers=[1, 2], keep_ratios=[0.7, 0.7], keep_first=2, keep_recent=0.1)
    plan.validate(3)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 40, (14,), generator=g)
    seq = st.Sequence(ids=ids, prompt_len=11, source="t", heldout=False)
    sal, h0 = st.marking_pass(m, seq, plan)
    pred = st.Predictor(16, 4, 2, seed=5).double()
    lo, hi = plan.prunable(seq.prompt_len)
    noise = [st.logistic_noise(hi - lo, g) for _ in plan.layers]
    # thresholds fixed at the starting point, so the finite differences see the same function
    r = st.sequence_losses(m, pred, seq, plan, sal, h0, st.LossOptions(), torch.Generator().manual_seed(6),
                           hard=False, noise=noise)
    thresholds = [t.detach() for t in r.thresholds]
    return m, plan, seq, sal, h0, pred, noise, thresholds


@pytest.mark.parametrize("weights", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)], ids=["cls", "mse", "rank", "total"])
def test_loss_gradients_against_finite_differences(grad_setup, weights):
    m, plan, seq, sal, h0, pred, noise, thresholds = grad_setup
    names = [k for k, _ in pred.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in pred.named_parameters())
    opts = st.LossOptions(w_cls=weights[0], w_mse=weights[1], w_rank=weights[2], tau=0.7, pairs=64)

    def loss(*ps):
        pd = dict(zip(names, ps))

        def score(s, h):
            return torch.func.functional_call(pred, pd, (s, h))

        return st.sequence_losses(m, score, seq, plan, sal, h0, opts, torch.Generator().manual_seed(7),
                                  hard=False, noise=noise, thresholds=thresholds).loss

    value = loss(*params)
    assert value.item() > 0
    grads = torch.autograd.grad(value, params)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    if weights[0]:  # the answer loss reaches the modules of both stages through the mask
        assert all(float(g.abs().sum()) > 0 for g in grads)
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_hard_mask_straight_through():
    """The hard Gumbel mask is exactly 0/1 in the forward, keeps about the stage's share, and still
    passes a gradient to the modules from the answer loss."""
    m = tiny_model(L=3)
    plan = st.Plan(layers=[1, 2], keep_ratios=[0.5, 0.5], keep_first=2, keep_recent=0.1)
    ids = torch.randint(0, 40, (30,), generator=torch.Generator().manual_seed(8))
    seq = st.Sequence(ids=ids, prompt_len=26, source="t", heldout=False)
    sal, h0 = st.marking_pass(m, seq, plan)
    pred = st.Predictor(16, 4, 2, seed=9).double()
    r = st.sequence_losses(m, pred, seq, plan, sal, h0, st.LossOptions(w_mse=0, w_rank=0),
                           torch.Generator().manual_seed(10))
    r.loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in pred.stages[0].parameters())
    assert 0.2 < float(r.kept[0]) < 0.8 and float(r.kept[1]) <= float(r.kept[0])


@pytest.mark.parametrize("n_stages", [1, 2])
def test_detached_pass_equals_the_graph_pass(n_stages):
    """--detach-pass (w_cls = 0, hard mask): the same losses, kept shares and thresholds as the pass
    with a graph (same noise), the same gradients for the last stage's module (nothing reaches it
    through the model in either), and for one stage the same gradient everywhere."""
    m = tiny_model(L=4, D=16, H=4, Hkv=2)
    plan = st.Plan(layers=[1, 3][:n_stages], keep_ratios=[0.6] * n_stages, keep_first=2, keep_recent=0.1)
    plan.validate(4)
    g = torch.Generator().manual_seed(21)
    ids = torch.randint(0, 40, (33,), generator=g)
    seq = st.Sequence(ids=ids, prompt_len=30, source="t", heldout=False)
    sal, h0 = st.marking_pass(m, seq, plan)
    lo, hi = plan.prunable(seq.prompt_len)
    noise = [st.logistic_noise(hi - lo, g) for _ in plan.layers]
    results, grads = [], []
    for detach in (False, True):
        pred = st.Predictor(16, 8, n_stages, seed=22).double()
        opts = st.LossOptions(w_cls=0, w_mse=1, w_rank=1, pairs=128, detach_pass=detach)
        r = st.sequence_losses(m, pred, seq, plan, sal, h0, opts, torch.Generator().manual_seed(23), noise=noise)
        r.loss.backward()
        results.append(r)
        grads.append([[p.grad.clone() for p in stage.parameters()] for stage in pred.stages])
    full, det = results
    assert det.loss.item() == pytest.approx(full.loss.item(), rel=1e-12)
    assert float(det.mse) == pytest.approx(float(full.mse), rel=1e-12) and float(det.rank) > 0
    assert [float(k) for k in det.kept] == pytest.approx([float(k) for k in full.kept], abs=0)
    assert float(det.kept[-1]) < 0.9
    assert [float(t) for t in det.thresholds] == pytest.approx([float(t) for t in full.thresholds], rel=1e-12)
    for a, b in zip(grads[0][-1], grads[1][-1]):
        assert rel_err(b.numpy(), a.numpy()) < 1e-10
    if n_stages == 1:
        for a, b in zip(grads[0][0], grads[1][0]):
            assert rel_err(b.numpy(), a.numpy()) < 1e-10
    with pytest.raises(ValueError, match="w_cls = 0"):
        st.sequence_losses(m, pred, seq, plan, sal, h0, st.LossOptions(detach_pass=True),
                           torch.Generator().manual_seed(1), noise=noise)


def test_boolean_key_mask_through_fused_attention_equals_removed_keys():
    """A boolean key mask on the fused (SDPA) path, as --detach-pass and the held-out evaluation use
    on a GPU, equals the model run with the masked keys physically removed."""
    m = tiny_model(L=4)
    n = 21
    g = torch.Generator().manual_seed(24)
    ids = torch.randint(0, 40, (n,), generator=g)
    m1 = torch.rand(n, generator=g) > 0.3
    m2 = m1 & (torch.rand(n, generator=g) > 0.3)
    m1[-1] = m2[-1] = True
    with torch.no_grad():
        ref, rows = removed_keys_reference(m, ids, [(1, m1.double()), (3, m2.double())])
        m.sdpa_dense = True
        try:
            fused, _ = m.forward(ids, key_masks={1: m1, 3: m2})
        finally:
            m.sdpa_dense = False
        explicit, _ = m.forward(ids, key_masks={1: m1, 3: m2})
    assert rows.numel() < n - 3
    assert rel_err(fused[rows].numpy(), ref.numpy()) < 1e-12
    assert rel_err(explicit[rows].numpy(), ref.numpy()) < 1e-12


# ----------------------------------------------------------------------------------------------
# Plan, data and file

def test_alive_quantile_equals_torch_quantile():
    g = torch.Generator().manual_seed(14)
    for n in (1, 2, 7, 50):
        x = torch.randn(n, generator=g, dtype=torch.float64)
        alive = torch.rand(n, generator=g) > 0.4
        alive[0] = True
        for q in (0.0, 0.1, 0.5, 0.9, 1.0):
            assert float(st.alive_quantile(x, alive, q)) == pytest.approx(float(torch.quantile(x[alive], q)), abs=1e-12)
    assert float(st.alive_quantile(torch.ones(3), torch.zeros(3, dtype=torch.bool), 0.5)) == 0.0


def test_default_schedule_and_keep_counts():
    assert st.default_layers(30) == [4, 7, 10, 13, 16, 19, 22, 25, 28]
    assert st.default_layers(32) == [4, 7, 10, 13, 16, 19, 22, 25, 28, 31]
    assert st.default_layers(2) == [1]
    p = st.Plan(layers=[1], keep_ratios=[0.9], keep_first=4, keep_recent=0.1)
    assert p.prunable(100) == (4, 90)      # ceil(0.1·100 − 1e-4) = 10 recent tokens, as the engine
    assert p.prunable(3) == (3, 3)
    assert st.Plan([1], [0.9], 0, 0.0).prunable(10) == (0, 9)  # the last prompt token is always kept
    assert st.lr_at(1, 100, 1.0) == pytest.approx(0.2) and st.lr_at(5, 100, 1.0) == pytest.approx(1.0)
    assert st.lr_at(100, 100, 1.0) == pytest.approx(0.1)


def test_data_file_validation(tmp_path):
    good = tmp_path / "d.safetensors"
    st.write_data(str(good), [([5, 6, 7, 8], 3, False, "a"), ([9, 10, 11], 1, True, "b")], "m")
    seqs, meta = st.load_data(str(good), n_vocab=20)
    assert [s.ids.tolist() for s in seqs] == [[5, 6, 7, 8], [9, 10, 11]]
    assert [(s.prompt_len, s.heldout, s.source) for s in seqs] == [(3, False, "a"), (1, True, "b")]
    assert meta["model.name"] == "m"
    with pytest.raises(st.UsageError, match="vocabulary"):
        st.load_data(str(good), n_vocab=10)
    with pytest.raises(st.UsageError, match="context"):
        st.load_data(str(good), n_vocab=20, n_ctx=3)

    def bad(tensors, meta, match):
        p = tmp_path / "bad.safetensors"
        save_file(tensors, str(p), metadata=meta)
        with pytest.raises(st.UsageError, match=match):
            st.load_data(str(p))

    base = {"ids": torch.tensor([1, 2, 3], dtype=torch.int32), "offsets": torch.tensor([0, 3], dtype=torch.int64),
            "prompt_len": torch.tensor([2], dtype=torch.int32), "heldout": torch.tensor([0], dtype=torch.uint8)}
    m = {"format": "sdtp-train-data", "version": "1", "sources": '["x"]', "model.name": ""}
    bad(dict(base, prompt_len=torch.tensor([3], dtype=torch.int32)), m, "answer")
    bad(dict(base, offsets=torch.tensor([0, 2], dtype=torch.int64)), m, "offsets")
    bad(dict(base, ids=torch.tensor([1, 2, 3], dtype=torch.int64)), m, "int32")
    bad({k: v for k, v in base.items() if k != "heldout"}, m, "heldout")
    bad(base, dict(m, format="other"), "format")
    bad(base, dict(m, sources='["x", "y"]'), "sources")
    with pytest.raises(st.UsageError, match="no such"):
        st.load_data(str(tmp_path / "absent.safetensors"))
    (tmp_path / "junk").write_bytes(b"not a safetensors file at all")
    with pytest.raises(st.UsageError, match="safetensors"):
        st.load_data(str(tmp_path / "junk"))


def test_predictor_file_layout(tmp_path):
    m = tiny_model(D=16, dtype=torch.float32)
    plan = st.Plan(layers=[1, 2], keep_ratios=[0.9, 0.8], keep_first=4, keep_recent=0.1)
    pred = st.Predictor(16, 4, 2, seed=11)
    path = tmp_path / "p.safetensors"
    st.save_predictor(str(path), m, pred, plan, {"train.command": "x y", "train.heldout_kendall_tau": [0.5, 0.25]})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    want = {}
    for s in range(2):
        want.update({f"stage.{s}.fc1.weight": [4, 16], f"stage.{s}.fc1.bias": [4], f"stage.{s}.fc2.weight": [2, 4],
                     f"stage.{s}.fc2.bias": [2]})
    assert {k: list(v.shape) for k, v in tensors.items()} == want
    assert all(v.dtype == torch.float32 for v in tensors.values())
    assert {k for k in meta if not k.startswith("info.")} == {
        "format", "version", "model.arch", "model.name", "model.n_layer", "model.n_embd", "model.n_vocab",
        "model.fingerprint", "plan.layers", "plan.keep_ratios", "plan.keep_first", "plan.keep_recent", "n_hidden"}
    assert meta["format"] == "sdtp-predictor" and meta["version"] == "1"
    assert (meta["model.arch"], meta["model.name"]) == ("llama", "tiny-test")
    assert (meta["model.n_layer"], meta["model.n_embd"], meta["model.n_vocab"]) == ("3", "16", "40")
    assert json.loads(meta["plan.layers"]) == [1, 2] and meta["plan.layers"] == "[1,2]"
    assert json.loads(meta["plan.keep_ratios"]) == [0.9, 0.8]
    assert meta["plan.keep_first"] == "4" and meta["plan.keep_recent"] == "0.1" and meta["n_hidden"] == "4"
    fp = json.loads(meta["model.fingerprint"])
    rows = [min(r, 39) for r in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597)]
    assert np.array_equal(np.float32(fp), m.w["tok_embd"][rows, :16].numpy().ravel())
    assert meta["info.train.command"] == "x y" and json.loads(meta["info.train.heldout_kendall_tau"]) == [0.5, 0.25]
    # the engine's score: fc2 folded to out0 − out1, on the file's weights, equals the module's
    h = torch.randn(5, 16, generator=torch.Generator().manual_seed(12))
    s = 1
    x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    a = torch.nn.functional.gelu(x @ tensors[f"stage.{s}.fc1.weight"].T + tensors[f"stage.{s}.fc1.bias"])
    w2, b2 = tensors[f"stage.{s}.fc2.weight"], tensors[f"stage.{s}.fc2.bias"]
    folded = a @ (w2[0] - w2[1]) + (b2[0] - b2[1])
    with torch.no_grad():
        assert torch.allclose(folded, pred(s, h), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The CLI

def test_cli_errors(tmp_path, capsys):
    data = tmp_path / "d.safetensors"
    st.write_data(str(data), [([5, 6, 7, 8], 3, False, "a")], "m")
    cases = [(["--model", str(tmp_path / "nope"), "--data", str(data), "--out", str(tmp_path / "p.st")], "no such"),
             (["--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "p.st"), "--steps", "0",
               "--device", "cpu"], "--steps"),
             (["--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "p.st"), "--device", "tpu"],
              "--device")]
    for argv, match in cases:
        assert st.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sdtp_train: error:") and match in err[0], err
    with pytest.raises(SystemExit) as e:
        st.main(["--model", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdtp_train: error:"), err


def test_init_and_detach_pass_options(tmp_path, capsys):
    """--init starts from a predictor file's modules (one step at a negligible learning rate leaves
    them as they were); a file for other layers, and --detach-pass with L_cls on, are one-line errors."""
    write_marker_model(tmp_path / "model", L=3)
    write_random_data(tmp_path / "d.safetensors", V=64, n_train=4, n_held=1, lo=24, hi=30)
    common = ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "d.safetensors"), "--device", "cpu",
              "--batch", "1", "--eval-every", "0", "--layers", "1,2", "--n-hidden", "8"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert st.main(common + ["--out", str(a), "--steps", "3", "--lr", "1e-2", "--w-cls", "0", "--detach-pass"]) == 0
    assert st.main(common + ["--out", str(b), "--steps", "1", "--lr", "1e-12", "--seed", "5", "--init", str(a)]) == 0
    capsys.readouterr()
    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        assert set(fa.keys()) == set(fb.keys())
        for k in fa.keys():
            assert torch.allclose(fa.get_tensor(k), fb.get_tensor(k), atol=1e-9), k
        assert fa.metadata()["info.train.detach_pass"] == "true" and fb.metadata()["info.train.init"] == str(a)
    fresh = tmp_path / "c.safetensors"
    assert st.main(common + ["--out", str(fresh), "--steps", "1", "--lr", "1e-12", "--seed", "5"]) == 0
    with safe_open(str(a), framework="pt") as fa, safe_open(str(fresh), framework="pt") as fc:
        assert not torch.allclose(fa.get_tensor("stage.0.fc1.weight"), fc.get_tensor("stage.0.fc1.weight"))
    capsys.readouterr()
    bad = [(common[:-4] + ["--layers", "1", "--out", str(b), "--init", str(a)], "layers [1, 2], the plan's at [1]"),
           (common + ["--out", str(b), "--init", str(tmp_path / "d.safetensors")], "not an sdtp predictor"),
           (common + ["--out", str(b), "--init", str(tmp_path / "none")], "no such file"),
           (common + ["--out", str(b), "--detach-pass"], "--detach-pass needs --w-cls 0")]
    for argv, match in bad:
        assert st.main(argv) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "warning" not in line]
        assert len(err) == 1 and err[0].startswith("sdtp_train: error:") and match in err[0], err


def test_training_learns_a_learnable_ranking(tmp_path, capsys):
    """The saliency of the marker model is mostly a function of the token (each id has a fixed
    attention pull), visible in its hidden state: 50 steps must lift held-out Kendall τ clearly."""
    write_marker_model(tmp_path / "model")
    write_random_data(tmp_path / "d.safetensors", V=64)
    out, log = tmp_path / "p.safetensors", tmp_path / "log.jsonl"
    rc = st.main(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "d.safetensors"), "--out", str(out),
                  "--device", "cpu", "--steps", "50", "--batch", "2", "--lr", "1e-2", "--eval-every", "25",
                  "--n-hidden", "16", "--pairs", "256", "--layers", "1,2,3", "--log", str(log), "--seed", "0"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "kendall_tau" in err and "answer cross-entropy" in err
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    start = json.loads(meta["info.train.heldout_kendall_tau_initial"])
    final = json.loads(meta["info.train.heldout_kendall_tau"])
    # observed (seed 0): mean τ −0.02 at the start, 0.24 after 50 steps (oracle by token id: 0.31)
    assert sum(final) / 3 > sum(start) / 3 + 0.12 and sum(final) / 3 > 0.12, (start, final)
    assert meta["info.train.trainer"] == "scripts/train/sdtp_train.py"
    assert meta["info.train.objective"].startswith("L_cls+L_mse+L_r, Gumbel-Softmax mask, weights")
    assert math.isfinite(float(meta["info.train.heldout_cls"])) and float(meta["info.train.heldout_cls_dense"]) > 0
    assert "--steps 50" in meta["info.train.command"]
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in recs if "eval" in r] == [0, 25, 50]
    assert all(math.isfinite(r["loss"]) for r in recs if "loss" in r)


def test_time_limit_and_bfloat16_matmuls(tmp_path, capsys):
    """--max-minutes stops early and records the steps done; --dtype bfloat16 runs (CPU here)."""
    write_marker_model(tmp_path / "model", L=2)
    write_random_data(tmp_path / "d.safetensors", V=64, n_train=4, n_held=1, lo=12, hi=16)
    out = tmp_path / "p.safetensors"
    rc = st.main(["--model", str(tmp_path / "model"), "--data", str(tmp_path / "d.safetensors"), "--out", str(out),
                  "--device", "cpu", "--steps", "1000", "--batch", "1", "--eval-every", "0", "--dtype", "bfloat16",
                  "--max-minutes", "1e-6"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "--max-minutes 1e-06 reached after 1 of 1000 steps" in err
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert (meta["info.train.steps"], meta["info.train.steps_planned"], meta["info.train.dtype"]) == \
        ("1", "1000", "bfloat16")
    assert json.loads(meta["plan.layers"]) == [1]
