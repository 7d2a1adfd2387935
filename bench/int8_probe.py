"""What int8 linear layers would give on this CPU, before building them into embed-core.

Two questions, each answered in one run (the dtypes side by side):

* speed: one linear layer at the MiniLM and BERT-base shapes (2048 token rows) in f32, in bf16
  prepacked for oneDNN (the path embed-core runs), through libtorch's dynamic int8 linear
  (`quantized::linear_dynamic`, per-tensor activations, per engine), and through oneDNN's
  `onednn::qlinear_pointwise` on a prepacked int8 weight: the GEMM alone, and with per-token
  activation scales quantized and dequantized in eager ops around it;
* quality: sentence-transformers' all-MiniLM-L6-v2 with every linear layer's matmul done on
  int8-rounded values (symmetric, per output channel for weights; activations per tensor or per
  token), against f32 on the first 1000 corpus texts: worst and mean cosine, and how often the
  top-5 neighbours of a text are the same set. bf16 beside it for scale.

    python bench/int8_probe.py MODEL_DIR CORPUS [THREADS]
"""

import sys
import time

import torch
from sentence_transformers import SentenceTransformer


def median_ms(f, n=15):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def speed(rows=2048):
    print(f"linear layer, {rows} rows, ms (median of 15)")
    print("shape          f32   bf16-pp  dyn-int8  onednn-gemm  per-token-eager")
    for k, n in [(384, 1536), (1536, 384), (768, 3072)]:
        x = torch.randn(rows, k)
        w = torch.randn(n, k) * 0.05
        b = torch.randn(n)
        t_f32 = median_ms(lambda: torch.nn.functional.linear(x, w, b))
        xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
        packed_bf16 = torch.ops.mkldnn._reorder_linear_weight(wb, rows)
        t_bf16 = median_ms(lambda: torch.ops.mkldnn._linear_pointwise(xb, packed_bf16, bb, "none", [], ""))
        sw = w.abs().amax(1) / 127
        wq = (w / sw[:, None]).round().clamp(-127, 127).to(torch.int8)
        dyn = torch.ao.nn.quantized.dynamic.Linear(k, n, dtype=torch.qint8)
        dyn.set_weight_bias(torch.quantize_per_channel(w, sw, torch.zeros(n, dtype=torch.long), 0, torch.qint8), b)
        t_dyn = median_ms(lambda: dyn(x))
        packed_int8 = torch.ops.onednn.qlinear_prepack(wq, [rows, k])
        ones, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)
        # Unsigned activations with zero point 128: signed int8 activations take a reference
        # path here that is thousands of times slower.
        xu = torch.randint(0, 255, (rows, k), dtype=torch.uint8)

        def gemm(xq):
            return torch.ops.onednn.qlinear_pointwise(xq, 1.0, 128, packed_int8, ones, zeros, None, 1.0, 0, torch.float32, "none", [], "")

        t_gemm = median_ms(lambda: gemm(xu))

        def per_token():
            sx = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
            xq = (x / sx).round().add_(128).clamp_(1, 255).to(torch.uint8)
            return gemm(xq) * sx * sw + b

        t_tok = median_ms(per_token)
        print(f"{k:>5}x{n:<5} {t_f32:7.2f} {t_bf16:8.2f} {t_dyn:9.2f} {t_gemm:12.2f} {t_tok:16.2f}")


def quality(model_dir, corpus):
    texts = [line.strip() for line in open(corpus) if line.strip()][:1000]
    model = SentenceTransformer(model_dir, device="cpu")

    def encode(m):
        return m.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True).float()

    ref = encode(model)
    ref_top = (ref @ ref.T).topk(6, dim=1).indices[:, 1:]

    def report(name, emb):
        cos = (ref * emb).sum(1)
        top = (emb @ emb.T).topk(6, dim=1).indices[:, 1:]
        same = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(ref_top, top)) / len(texts)
        print(f"{name:<28} worst cosine {cos.min():.5f}  mean {cos.mean():.6f}  same top-5 {same:.3f}")

    report("bf16 (whole model)", encode(SentenceTransformer(model_dir, device="cpu").bfloat16()))
    plain = torch.nn.Linear.forward

    def int8_forward(per_token):
        def forward(self, x):
            sw = self.weight.abs().amax(1, keepdim=True) / 127
            wq = (self.weight / sw).round().clamp(-127, 127)
            if per_token:
                sx = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
            else:
                sx = x.abs().amax().clamp(min=1e-8) / 127
            xq = (x / sx).round().clamp(-127, 127)
            return (xq @ wq.T) * sx * sw.T + self.bias

        return forward

    try:
        for per_token in (False, True):
            torch.nn.Linear.forward = int8_forward(per_token)
            report(f"int8, activations per {'token' if per_token else 'tensor'}", encode(model))
    finally:
        torch.nn.Linear.forward = plain


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    speed()
    quality(sys.argv[1], sys.argv[2])
