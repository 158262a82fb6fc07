"""Kernel benchmarks shared by bench_cpu.py and bench_gpu.py: each measures the kernel and its peers in one run.

Legend: B = lists, L = total list elements, H = heads, d = head dim, D = H*d, M = longest list, K = vectors,
N = batch, P = parameters.

Timings are medians over repeats after warm-up; on CUDA with CUDA events around each call (the time the GPU
spends, launch included), on CPU with perf_counter. Every function returns a plain dict (JSON-ready) and never
needs torchrec or deepspeed, so the GPU machine runs it with torch + triton alone.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from scalefirst_kernels import hvp as H
from scalefirst_kernels import ops
from torch import nn

from framework.losses.contrastive import RankCLIPLossConfig, clip_loss, rankclip_loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fn: Callable[[], Any], device: torch.device, *, warmup: int = 3, reps: int = 10) -> float:
    """Median seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Measured device copy bandwidth in bytes/s, counting bytes read and written (the roofline's denominator)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), device, warmup=3, reps=10)
    return 2 * src.numel() * 4 / t


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# ---------------------------------------------------------------- jagged attention pooling


def pooling_inputs(B: int, mean_len: int, max_len: int, D: int, H_: int, dtype: torch.dtype, device, seed: int = 0):
    """Lengths ~ min(max_len, Exponential(mean)) (heavy enough to hit max_len), plus the same data padded."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.empty(B).exponential_(1.0 / mean_len, generator=g).long().clamp(0, max_len)
    lengths[0] = max_len
    offsets = torch.zeros(B + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    L, d = int(offsets[-1]), D // H_
    q = torch.randn(B, H_, d, generator=g).to(device, dtype)
    k = torch.randn(L, H_, d, generator=g).to(device, dtype)
    v = torch.randn(L, H_, d, generator=g).to(device, dtype)
    bias = (torch.randn(L, H_, generator=g) * 0.1).to(device, dtype)
    offsets, lengths = offsets.to(device), lengths.to(device)
    M = max_len
    seg = torch.repeat_interleave(torch.arange(B, device=device), lengths, output_size=L)
    pos = torch.arange(L, device=device) - offsets[seg]
    k_pad = torch.zeros(B, M, H_, d, dtype=dtype, device=device)
    v_pad = torch.zeros_like(k_pad)
    bias_pad = torch.zeros(B, M, H_, dtype=dtype, device=device)
    k_pad[seg, pos], v_pad[seg, pos], bias_pad[seg, pos] = k, v, bias
    mask = torch.arange(M, device=device)[None, :] < lengths[:, None]
    return {"q": q, "k": k, "v": v, "bias": bias, "offsets": offsets, "k_pad": k_pad, "v_pad": v_pad,
            "bias_pad": bias_pad, "mask": mask, "L": L, "mean_len": float(lengths.float().mean())}  # fmt: skip


def padded_pooling(q_BHd, k_BMHd, v_BMHd, bias_BMH, mask_BM):
    """What an eager DIN implementation does: scores over the padded lists, masked softmax, weighted sum."""
    d = q_BHd.shape[-1]
    scores = torch.einsum("bhd,bmhd->bhm", q_BHd, k_BMHd) / math.sqrt(d) + bias_BMH.transpose(1, 2)
    scores = scores.masked_fill(~mask_BM[:, None, :], float("-inf"))
    w = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(v_BMHd.dtype)
    return torch.einsum("bhm,bmhd->bhd", w, v_BMHd)


def sdpa_pooling(q_BHd, k_BMHd, v_BMHd, bias_BMH, mask_BM):
    """SDPA with the padding mask folded into an additive bias (one query per list)."""
    attn_bias = bias_BMH.permute(0, 2, 1)[:, :, None, :].masked_fill(~mask_BM[:, None, None, :], float("-inf"))
    out = F.scaled_dot_product_attention(
        q_BHd[:, :, None, :], k_BMHd.transpose(1, 2), v_BMHd.transpose(1, 2), attn_mask=attn_bias
    )
    return out[:, :, 0, :]


def bench_pooling(cfg: dict[str, Any], device: torch.device, *, backends: list[str], peers: bool, compile_: bool,
                  copy_bw: float | None, reps: int = 10) -> dict[str, Any]:  # fmt: skip
    """Forward (and backward) times of the pooling: each backend, eager padded, compiled padded, SDPA."""
    x = pooling_inputs(cfg["B"], cfg["mean_len"], cfg["max_len"], cfg["D"], cfg["H"], cfg["dtype"], device)
    q, k, v, bias, off = x["q"], x["k"], x["v"], x["bias"], x["offsets"]
    res: dict[str, Any] = {k_: (str(v_) if k_ == "dtype" else v_) for k_, v_ in cfg.items()}
    res.update(L=x["L"], measured_mean_len=x["mean_len"])
    elt = q.element_size()
    # Bytes a fused forward must move: k, v, bias once, q in, out out (offsets negligible).
    fwd_bytes = (2 * k.numel() + bias.numel() + 2 * q.numel()) * elt
    res["fwd_bytes"] = fwd_bytes
    times: dict[str, float | None] = {}
    for be in backends:
        times[f"fwd_{be}"] = bench(lambda be=be: ops.jagged_attention_pooling(q, k, v, off, bias, backend=be),
                                   device, reps=reps)  # fmt: skip
    pad = (q, x["k_pad"], x["v_pad"], x["bias_pad"], x["mask"])
    if peers:
        times["fwd_eager_padded"] = bench(lambda: padded_pooling(*pad), device, reps=reps)
        times["fwd_sdpa_padded"] = bench(lambda: sdpa_pooling(*pad), device, reps=reps)
    if compile_:
        compiled_pad = torch.compile(padded_pooling, dynamic=False)
        times["fwd_compile_padded"] = bench(lambda: compiled_pad(*pad), device, reps=reps)
        compiled_ref = torch.compile(lambda *a: ops.jagged_attention_pooling(*a, backend="reference"), dynamic=False)
        times["fwd_compile_reference"] = bench(lambda: compiled_ref(q, k, v, off, bias), device, reps=reps)
    # Backward: the fused kernel alone (from saved forward outputs) for triton, else autograd of the reference.
    qg, kg, vg, bg = (t.detach().requires_grad_() for t in (q, k, v, bias))
    grad_out = torch.randn_like(q)
    if "triton" in backends:
        from scalefirst_kernels.triton import jagged_attention_pooling as tri

        out, lse = tri.jagged_attention_pooling_fwd(q, k, v, off, bias)
        times["bwd_triton"] = bench(lambda: tri.jagged_attention_pooling_bwd(q, k, v, off, bias, out, lse, grad_out),
                                    device, reps=reps)  # fmt: skip
    out_ref = ops.jagged_attention_pooling(qg, kg, vg, off, bg, backend="reference")
    times["bwd_reference"] = bench(
        lambda: torch.autograd.grad(out_ref, (qg, kg, vg, bg), grad_out, retain_graph=True), device, reps=reps
    )

    # Forward + backward, what a training step pays: eager reference vs compiled reference (the CPU question).
    def ref_step(fn):
        return lambda: torch.autograd.grad(fn(qg, kg, vg, off, bg), (qg, kg, vg, bg), grad_out)

    def ref_fn(*a):
        return ops.jagged_attention_pooling(*a, backend="reference")

    times["fwd_bwd_reference"] = bench(ref_step(ref_fn), device, reps=reps)
    if compile_:
        times["fwd_bwd_compile_reference"] = bench(ref_step(torch.compile(ref_fn, dynamic=False)), device, reps=reps)
    res["seconds"] = times
    best = "triton" if "triton" in backends else "reference"
    t_best = times[f"fwd_{best}"]
    res["kernel"] = best
    if copy_bw:
        res["fwd_GBps"] = fwd_bytes / t_best / 1e9
        res["fwd_fraction_of_copy_bw"] = fwd_bytes / t_best / copy_bw
    res["speedup_vs_eager_padded"] = _ratio(times.get("fwd_eager_padded"), t_best)
    res["speedup_vs_compile_padded"] = _ratio(times.get("fwd_compile_padded"), t_best)
    res["speedup_vs_sdpa_padded"] = _ratio(times.get("fwd_sdpa_padded"), t_best)
    res["speedup_vs_reference"] = _ratio(times.get("fwd_reference"), t_best)
    res["speedup_vs_compile_reference"] = _ratio(times.get("fwd_compile_reference"), t_best)
    res["bwd_over_fwd"] = _ratio(times.get(f"bwd_{best}"), t_best)
    res["reference_fwd_bwd_compile_speedup"] = _ratio(
        times["fwd_bwd_reference"], times.get("fwd_bwd_compile_reference")
    )
    return res


# ---------------------------------------------------------------- HVPs


class MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, classes: int, depth: int = 3) -> None:
        super().__init__()
        dims = [d_in] + [hidden] * (depth - 1)
        self.body = nn.Sequential(
            *[m for a, b in zip(dims, dims[1:], strict=False) for m in (nn.Linear(a, b), nn.GELU())]
        )
        self.out = nn.Linear(dims[-1], classes)

    def forward(self, x):
        return self.out(self.body(x))


class CNN(nn.Module):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Linear(channels, classes)

    def forward(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.out(h.mean((2, 3)))


def hvp_models(device: torch.device, size: str) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    if size == "gpu":
        mlp, n_mlp, cnn, n_cnn, hw = MLP(512, 1024, 100), 1024, CNN(64, 10), 128, 32
    elif size == "cpu":
        mlp, n_mlp, cnn, n_cnn, hw = MLP(64, 256, 10), 256, CNN(16, 10), 32, 16
    else:  # smoke
        mlp, n_mlp, cnn, n_cnn, hw = MLP(8, 16, 4), 16, CNN(4, 3), 4, 6
    d_in = mlp.body[0].in_features
    out = {
        "mlp": (mlp, torch.randn(n_mlp, d_in, generator=g), torch.randint(0, mlp.out.out_features, (n_mlp,), generator=g)),
        "cnn": (cnn, torch.randn(n_cnn, 3, hw, hw, generator=g), torch.randint(0, cnn.out.out_features, (n_cnn,), generator=g)),
    }  # fmt: skip
    return {k: (m.to(device), x.to(device), y.to(device)) for k, (m, x, y) in out.items()}


def _bench_model_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, K: int, reps: int):
    f, primals = H.module_loss(model, lambda out: F.cross_entropy(out, y), [x])
    P = sum(p.numel() for p in primals.values())
    V = H.unflatten(torch.randn(K, P, device=device), primals)
    v0 = {n: t[0] for n, t in V.items()}
    grad_f = torch.func.grad(f)
    t: dict[str, float] = {"fwd_bwd": bench(lambda: grad_f(primals), device, reps=reps)}
    for mode in H.MODES:
        t[f"hvp_single_{mode}"] = bench(lambda mode=mode: H.hvp(f, primals, v0, mode), device, reps=reps)
        t[f"hvp_batched_{mode}"] = bench(lambda mode=mode: H.hvp_multi(f, primals, V, mode), device, reps=reps)
    # The baseline: torch.func's HVP (jvp of grad) called once per vector.
    t["hvp_loop_torch_func"] = bench(
        lambda: [torch.func.jvp(grad_f, (primals,), ({n: V[n][i] for n in V},)) for i in range(K)],
        device, warmup=1, reps=max(2, reps // 2),
    )  # fmt: skip
    fastest = min(H.MODES, key=lambda m: t[f"hvp_batched_{m}"])
    return {
        "params": P,
        "seconds": t,
        "faster_mode_batched": fastest,
        "faster_mode_single": min(H.MODES, key=lambda m: t[f"hvp_single_{m}"]),
        "batched_per_vector_over_fwd_bwd": t[f"hvp_batched_{fastest}"] / K / t["fwd_bwd"],
        "batched_speedup_vs_torch_func_loop": t["hvp_loop_torch_func"] / t[f"hvp_batched_{fastest}"],
    }


def bench_hvp(device: torch.device, size: str, K: int, reps: int = 5) -> dict[str, Any]:
    """Per model: one forward+backward, H v for K vectors by each mode (batched), and the torch.func loop."""
    models = {name: _bench_model_hvp(m, x, y, device, K, reps) for name, (m, x, y) in hvp_models(device, size).items()}
    return {"K": K, "models": models}


def bench_output_layer(device: torch.device, N: int, D: int, C: int, K: int, backends: list[str], reps: int = 10):
    """The fused output-layer Hessian product on K vectors vs hvp_multi (torch.func) on the same layer."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g).to(device)
    W = (torch.randn(C, D, generator=g) / math.sqrt(D)).to(device)
    b = torch.zeros(C, device=device)
    y = torch.randint(0, C, (N,), generator=g).to(device)
    VW, Vb = torch.randn(K, C, D, device=device), torch.randn(K, C, device=device)
    t = {f"fused_{be}": bench(lambda be=be: H.linear_softmax_ce_hvp(x, W, b, VW, Vb, backend=be), device, reps=reps)
         for be in backends}  # fmt: skip

    def f(p):
        return F.cross_entropy(x @ p["w"].T + p["b"], y)

    prim, tang = {"w": W, "b": b}, {"w": VW, "b": Vb}
    for mode in H.MODES:
        t[f"torch_func_{mode}"] = bench(lambda mode=mode: H.hvp_multi(f, prim, tang, mode), device, reps=reps)
    best_tf = min(t[f"torch_func_{m}"] for m in H.MODES)
    best = min(t[f"fused_{be}"] for be in backends)
    return {"N": N, "D": D, "C": C, "K": K, "seconds": t, "fused_speedup_vs_torch_func": best_tf / best}


def bench_solvers(device: torch.device, P: int, K: int, iters: int, reps: int = 5) -> dict[str, Any]:
    g = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g))
    A = ((Q * torch.logspace(-2, 1, P)) @ Q.T).to(device)
    bmat = torch.randn(K, P, generator=g).to(device)
    t_cg = bench(lambda: H.conjugate_gradient(lambda V: V @ A, bmat, damping=0.01, iterations=iters), device, reps=reps)
    t_li = bench(lambda: H.lissa(lambda V: V @ A, bmat, damping=0.001, scale=15.0, depth=iters), device, reps=reps)
    t_mv = bench(lambda: bmat @ A, device, reps=reps)
    return {"P": P, "K": K, "iterations": iters, "seconds": {"cg": t_cg, "lissa": t_li, "matvec": t_mv},
            "cg_overhead_per_iteration_over_matvec": t_cg / iters / t_mv,
            "lissa_overhead_per_iteration_over_matvec": t_li / (iters + 1) / t_mv}  # fmt: skip


# ---------------------------------------------------------------- Plackett-Luce / RankCLIP loss


def bench_rankclip(device: torch.device, N: int, D: int, backends: list[str], compile_: bool, reps: int = 10):
    """clip_loss vs rankclip_loss (forward + backward wrt both embeddings) at batch N, and the PL term alone."""
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(N, D, generator=g), dim=1).to(device).requires_grad_()
    txt = F.normalize(torch.randn(N, D, generator=g), dim=1).to(device).requires_grad_()
    t: dict[str, float] = {}

    def step(loss_fn):
        loss = loss_fn()
        torch.autograd.grad(loss, (img, txt))

    t["clip_fwd_bwd"] = bench(lambda: step(lambda: clip_loss(img, txt, 14.3)), device, reps=reps)
    for be in backends:
        cfg = RankCLIPLossConfig(kernel_backend=be)  # type: ignore[arg-type]
        t[f"rankclip_fwd_bwd_{be}"] = bench(lambda cfg=cfg: step(lambda: rankclip_loss(img, txt, 14.3, cfg)["loss"]),
                                            device, reps=reps)  # fmt: skip
    ego = (txt @ txt.T).detach().requires_grad_()
    order = torch.argsort((img @ img.T).detach(), dim=1, descending=True, stable=True)
    mu = 1.0 / torch.log(torch.arange(1, N + 1, device=device, dtype=torch.float32) + 1.0)
    for be in backends:
        t[f"pl_fwd_bwd_{be}"] = bench(
            lambda be=be: torch.autograd.grad(ops.plackett_luce_loss(ego, order, mu, backend=be).sum(), ego),
            device, reps=reps,
        )  # fmt: skip
    if compile_:
        compiled = torch.compile(lambda e: ops.plackett_luce_loss(e, order, mu, backend="reference").sum())
        t["pl_fwd_bwd_compile_reference"] = bench(lambda: torch.autograd.grad(compiled(ego), ego), device, reps=reps)
    best = "triton" if "triton" in backends else "reference"
    return {
        "N": N,
        "D": D,
        "seconds": t,
        "kernel": best,
        "rankclip_over_clip": t[f"rankclip_fwd_bwd_{best}"] / t["clip_fwd_bwd"],
        "pl_speedup_vs_reference": _ratio(t.get("pl_fwd_bwd_reference"), t[f"pl_fwd_bwd_{best}"]),
        "pl_speedup_vs_compile_reference": _ratio(t.get("pl_fwd_bwd_compile_reference"), t[f"pl_fwd_bwd_{best}"]),
    }


def summary(device: str, pooling: list[dict], hvp: dict, rank: dict, roofline: bool) -> dict[str, Any]:
    """The results interface: one number per goal (the first, headline pooling config), null where not measured."""
    head = pooling[0]
    batched = [m["batched_per_vector_over_fwd_bwd"] for m in hvp["models"].values()]
    speedups = [m["batched_speedup_vs_torch_func_loop"] for m in hvp["models"].values()]
    return {
        "device": device,
        "pooling_fwd_speedup_vs_eager": head["speedup_vs_eager_padded"],
        "pooling_fwd_speedup_vs_compile": head["speedup_vs_compile_padded"],
        "pooling_fwd_fraction_of_roofline": head.get("fwd_fraction_of_copy_bw") if roofline else None,
        "pooling_bwd_over_fwd": head["bwd_over_fwd"],
        "hvp_batched_over_fwd_bwd": max(batched),
        "hvp_speedup_vs_torch_func": min(speedups),
        "rankclip_loss_over_clip": rank["rankclip_over_clip"],
    }
