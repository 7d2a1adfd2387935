"""Where a half-precision forward batch spends CPU time: the ops of one BERT layer, MiniLM- and
base-shaped, on token counts that change every batch (as length-sorted dynamic batches do), with
torch.profiler's CPU and CUDA totals per op. Run on a GPU machine:
    python3 bench/gpu_profile_ops.py
"""
import time
import torch
import torch.nn.functional as F

torch.manual_seed(0)
dev = "cuda"


def layer_ops(dtype, hidden, heads, inter, tokens, b):
    hd = hidden // heads
    x = torch.randn(tokens, hidden, device=dev, dtype=dtype)
    wqkv = torch.randn(3 * hidden, hidden, device=dev, dtype=dtype) * 0.02
    bqkv = torch.zeros(3 * hidden, device=dev, dtype=dtype)
    w1 = torch.randn(inter, hidden, device=dev, dtype=dtype) * 0.02
    b1 = torch.zeros(inter, device=dev, dtype=dtype)
    lens = torch.full((b,), tokens // b, dtype=torch.int64)
    lens[-1] += tokens - int(lens.sum())
    cu = torch.zeros(b + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    cu = cu.to(dev)
    return x, wqkv, bqkv, w1, b1, cu, int(lens.max()), hd


def one(dtype, hidden, heads, inter, tokens, b, what):
    x, wqkv, bqkv, w1, b1, cu, maxlen, hd = layer_ops(dtype, hidden, heads, inter, tokens, b)
    if what == "linear":
        return F.linear(x, wqkv, bqkv)
    if what == "linear_nobias":
        return F.linear(x, wqkv)
    if what == "layernorm":
        return F.layer_norm(x, (hidden,))
    if what == "gelu":
        return F.gelu(F.linear(x, w1, b1))
    if what == "flash":
        qkv = F.linear(x, wqkv, bqkv).view(tokens, 3, heads, hd)
        return torch.ops.aten._flash_attention_forward(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, maxlen, maxlen, 0.0, False, False)[0]


def timed(dtype, shape, what, n=40):
    hidden, heads, inter = shape
    # warm-up on one shape
    one(dtype, hidden, heads, inter, 4000, 64, what)
    torch.cuda.synchronize()
    cpu = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        tokens = 3000 + 37 * i  # a new M every call
        xs = layer_ops(dtype, hidden, heads, inter, tokens, 64)  # inputs outside the timed call
        torch.cuda.synchronize()
        t = time.perf_counter()
        x, wqkv, bqkv, w1, b1, cu, maxlen, hd = xs
        if what == "linear":
            F.linear(x, wqkv, bqkv)
        elif what == "linear_nobias":
            F.linear(x, wqkv)
        elif what == "layernorm":
            F.layer_norm(x, (hidden,))
        elif what == "gelu":
            F.gelu(x)
        elif what == "flash":
            qkv = F.linear(x, wqkv, bqkv).view(tokens, 3, heads, hd)
            torch.ops.aten._flash_attention_forward(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, maxlen, maxlen, 0.0, False, False)
        cpu += time.perf_counter() - t  # CPU time to enqueue
        torch.cuda.synchronize()
    return cpu / n * 1e3


def same_shape(dtype, shape, what, n=40):
    hidden, heads, inter = shape
    xs = layer_ops(dtype, hidden, heads, inter, 4000, 64)
    x, wqkv, bqkv, w1, b1, cu, maxlen, hd = xs
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        F.linear(x, wqkv, bqkv)
    return (time.perf_counter() - t) / n * 1e3


print(torch.__version__, torch.cuda.get_device_name(0))
for shape_name, shape in (("minilm", (384, 12, 1536)), ("base", (768, 12, 3072))):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        row = {w: timed(dtype, shape, w) for w in ("linear", "linear_nobias", "layernorm", "gelu")}
        if dtype != torch.float32:
            row["flash(+linear)"] = timed(dtype, shape, "flash")
        row["linear same M"] = same_shape(dtype, shape, "linear")
        print(shape_name, str(dtype).replace("torch.", ""), "CPU ms per call (new M each call): " +
              ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
