"""Which int8 rounding keeps retrieval: a simulation before building it into embed-core.

all-MiniLM-L6-v2 in sentence-transformers with its linear layers' weights rounded to int8 (per
output channel, symmetric) by round-to-nearest or by GPTQ (error feedback through the inverse
Hessian of the layer's calibration inputs), optionally with per-token activations and int8 word
embeddings as embed-core runs them, and with or without a block Hadamard transform of every
linear layer's input channels (weights and activations alike, `--hadamard 128`). The simulated
activation range is each row's own [min, max], where embed-core widens it to hold 0: a small
difference, kept so that the figures in bench/results stay reproducible. Each variant is compared with f32 on texts it was not
calibrated on: the reference texts, and the second half of the corpus when the first half is the
calibration set. Printed per variant: worst and mean cosine to f32, and how often a text's top-5
neighbours are f32's set.

    python bench/int8_gptq_probe.py MODEL_DIR REFERENCE_JSON CORPUS [THREADS] [--hadamard BLOCK]
"""

import json
import re
import sys

import torch
from sentence_transformers import SentenceTransformer


def builtin_calibration():
    src = open("crates/embed-core/src/runtime/calibrate.rs").read()
    block = src.split("const CALIBRATION_TEXTS")[1].split("];")[0]
    out = []
    for m in re.finditer(r'"((?:[^"\\]|\\.|\\\n)*)"', block, re.S):
        t = re.sub(r"\\\n\s*", "", m.group(1)).replace("\\n", "\n")
        out.append(t)
    return out


def fake_quant_rows(w, steps=127):
    s = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / steps
    return (w / s).round().clamp(-steps, steps) * s


def hadamard(block):
    h = torch.ones(1, 1)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / block**0.5


def gptq(w, h, block=128, damp=0.01, act_order=True):
    w = w.clone().double()
    h = h.clone().double()
    n = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    scale = w.abs().amax(1).clamp(min=1e-12) / 127
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.diag(h).mean() * torch.eye(n, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hi = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            qc = (col / scale).round().clamp(-127, 127) * scale
            q[:, i1 + i] = qc
            e = (col - qc) / hi[i, i]
            w1[:, i:] -= e[:, None] * hi[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    return q.float()


def main(model_dir, ref_json, corpus_path, block):
    ref_texts = [it["text"] for it in json.load(open(ref_json))["items"]]
    corpus = [line.strip() for line in open(corpus_path) if line.strip()]
    half = len(corpus) // 2
    calib = {"builtin": builtin_calibration(), "corpus-a": corpus[:half]}
    evals = {"ref": ref_texts, "corpus-b": corpus[half:]}
    model = SentenceTransformer(model_dir, device="cpu")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    emb = model[0].auto_model.embeddings.word_embeddings
    # The transform each layer's input goes through: block diagonal and orthogonal, applied to
    # the weight's rows too, so that the f32 product is unchanged.
    rot = {n: torch.block_diag(*[hadamard(block)] * (m.in_features // block)) if block else None for n, m in linears.items()}
    rot_of = {m: rot[n] for n, m in linears.items()}
    original = {n: (m.weight.data @ rot[n] if block else m.weight.data).clone() for n, m in linears.items()}
    emb_orig = emb.weight.data.clone()
    act_quant = {"on": False}
    plain = torch.nn.Linear.forward

    def forward(self, x):
        if block:
            x = x @ rot_of[self]
        if act_quant["on"]:
            lo = x.amin(-1, keepdim=True)
            hi = x.amax(-1, keepdim=True)
            s = (hi - lo).clamp(min=1e-8) / 255
            zp = (-lo / s).round()
            x = ((x / s).round() + zp).clamp(0, 255).sub(zp).mul(s)
        return plain(self, x)

    torch.nn.Linear.forward = forward
    for n, m in linears.items():
        m.weight.data = original[n].clone()

    def encode(texts):
        return model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True).float()

    base = {k: encode(v) for k, v in evals.items()}
    tops = {k: (e @ e.T).topk(6, dim=1).indices[:, 1:] for k, e in base.items()}

    hessians = {}
    for cname, ctexts in calib.items():
        hs = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in linears.items()}
        counts = {n: 0 for n in linears}
        hooks = []
        for n, m in linears.items():
            def hook(mod, inp, out, n=n):
                x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                if block:
                    x = x @ rot[n].double()
                hs[n] += x.T @ x
                counts[n] += x.shape[0]
            hooks.append(m.register_forward_hook(hook))
        # Padding rows would enter the Hessian: encode one text at a time.
        model.encode(ctexts, batch_size=1)
        for h in hooks:
            h.remove()
        hessians[cname] = hs
        print(f"calibration {cname}: {len(ctexts)} texts, {counts[next(iter(linears))]} token rows", flush=True)

    def report(name):
        row = []
        for k, texts in evals.items():
            e = encode(texts)
            cos = (base[k] * e).sum(1)
            top = (e @ e.T).topk(6, dim=1).indices[:, 1:]
            same = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(tops[k], top)) / len(texts)
            row.append(f"{k}: worst {cos.min():.5f} mean {cos.mean():.6f} same-top5 {100 * same:5.1f} %")
        print(f"{name:<34} " + " | ".join(row), flush=True)

    def set_weights(kind):
        for n, m in linears.items():
            if kind == "f32":
                m.weight.data = original[n].clone()
            elif kind == "rtn":
                m.weight.data = fake_quant_rows(original[n])
            else:
                m.weight.data = gptq(original[n], hessians[kind][n])

    torch.nn.Linear.forward = plain
    bf16 = SentenceTransformer(model_dir, device="cpu").bfloat16()
    for k, texts in evals.items():
        e = bf16.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True).float()
        top = (e @ e.T).topk(6, dim=1).indices[:, 1:]
        same = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(tops[k], top)) / len(texts)
        print(f"bf16 {k}: worst {((base[k] * e).sum(1)).min():.5f} same-top5 {100 * same:.1f} %")
    torch.nn.Linear.forward = forward

    tag = f"H{block} " if block else ""
    for wkind in ["rtn"] + list(calib):
        set_weights(wkind)
        for act in (False, True):
            for emb_q in (False, True):
                act_quant["on"] = act
                emb.weight.data = fake_quant_rows(emb_orig) if emb_q else emb_orig.clone()
                report(f"{tag}W {wkind}{' +A' if act else ''}{' +E' if emb_q else ''}")
    set_weights("f32")
    for act, emb_q in ((True, False), (False, True)):
        act_quant["on"] = act
        emb.weight.data = fake_quant_rows(emb_orig) if emb_q else emb_orig.clone()
        report(f"{tag}W f32{' +A' if act else ''}{' +E' if emb_q else ''}")


if __name__ == "__main__":
    args = sys.argv[1:]
    block = 0
    if "--hadamard" in args:
        i = args.index("--hadamard")
        block = int(args[i + 1])
        del args[i : i + 2]
    torch.set_num_threads(int(args[3]) if len(args) > 3 else 2)
    main(args[0], args[1], args[2], block)
