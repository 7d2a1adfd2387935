"""embed-server's gRPC API (TEI's tei.v1) checked with a client generated from the proto at run
time (grpcio-tools), against the same server's HTTP routes.

Usage: grpc_client_check.py GRPC_ADDR HTTP_BASE API_KEY PROTO_DIR

The server serves four models: `bert` (the default, an embedder), `splade`, `classifier` and
`reranker`; the client reaches the others with the `x-embed-model` metadata. Every unary and
streaming method is called and its answer compared with the HTTP route's (vectors and scores to
1e-6); the errors are checked for their codes (UNAUTHENTICATED, INVALID_ARGUMENT,
RESOURCE_EXHAUSTED, UNIMPLEMENTED, NOT_FOUND). The server must run with --max-concurrent 1 (for
the RESOURCE_EXHAUSTED check), --max-inputs 4 and --max-body-bytes 65536. Prints a JSON summary: the methods called and
the checks made; exits non-zero on the first failed check.
"""

import importlib
import json
import math
import socket
import sys
import tempfile
import time
import urllib.request

import grpc
from grpc_tools import protoc

GRPC_ADDR, HTTP_BASE, KEY, PROTO_DIR = sys.argv[1:5]
AUTH = ("authorization", f"Bearer {KEY}")
TEXTS = ["hello world", "the cat sat on the mat", "a quick brown fox jumps"]
TOL = 1e-6

called = set()
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


def close(a, b, what):
    """Equal to 1e-6, relative to the largest magnitude where it is over 1 (unnormalised vectors
    and logits: padding in a batch of another size moves the last float bits)."""
    check(len(a) == len(b), f"{what}: lengths {len(a)} != {len(b)}")
    check(len(a) > 0, f"{what}: empty")
    scale = max(1.0, max(abs(y) for y in b))
    worst = max(abs(x - y) for x, y in zip(a, b))
    check(not math.isnan(worst) and worst <= TOL * scale, f"{what}: max abs diff {worst} > {TOL * scale}")


def http(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(HTTP_BASE + path, data=data, method="GET" if body is None else "POST")
    req.add_header("Authorization", f"Bearer {KEY}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        raw = r.read()
        return json.loads(raw) if path != "/metrics" else raw.decode()


def generate():
    out = tempfile.mkdtemp(prefix="tei-grpc-")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", "tei.proto"])
    check(rc == 0, f"protoc exited with {rc}")
    sys.path.insert(0, out)
    return importlib.import_module("tei_pb2"), importlib.import_module("tei_pb2_grpc")


pb, rpc = generate()
channel = grpc.insecure_channel(GRPC_ADDR)
grpc.channel_ready_future(channel).result(timeout=30)
info_stub = rpc.InfoStub(channel)
embed_stub = rpc.EmbedStub(channel)
predict_stub = rpc.PredictStub(channel)
rerank_stub = rpc.RerankStub(channel)
tokenize_stub = rpc.TokenizeStub(channel)


def md(model=None, key=True):
    m = [AUTH] if key else []
    if model:
        m.append(("x-embed-model", model))
    return m


def unary(method, stub_call, request, model=None):
    called.add(method)
    return stub_call(request, metadata=md(model), timeout=60)


def streamed(method, stub_call, requests, model=None):
    called.add(method)
    return list(stub_call(iter(requests), metadata=md(model), timeout=60))


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


# Info: the default model and the limits, as GET /info says.
info = unary("Info", info_stub.Info, pb.InfoRequest())
http_info = http("/info")
check(info.model_type == pb.MODEL_TYPE_EMBEDDING, f"model_type {info.model_type}")
check(info.model_id == http_info["model_source"], f"model_id {info.model_id!r} vs {http_info['model_source']!r}")
check(info.max_input_length == http_info["max_input_length"], "max_input_length")
check(info.max_client_batch_size == http_info["max_client_batch_size"] == 4, "max_client_batch_size")
check(info.max_concurrent_requests == http_info["max_concurrent_requests"] == 1, "max_concurrent_requests")
check(info.version == http_info["version"], "version")

# Embed / EmbedStream: the vectors of /embed, normalized or not.
for normalize in (True, False):
    expected = http("/embed", {"inputs": TEXTS, "normalize": normalize})
    for text, want in zip(TEXTS, expected):
        r = unary("Embed", embed_stub.Embed, pb.EmbedRequest(inputs=text, normalize=normalize))
        close(r.embeddings, want, f"Embed normalize={normalize} {text!r}")
        check(r.metadata.compute_chars == len(text), f"compute_chars {r.metadata.compute_chars}")
        check(r.metadata.compute_tokens > 2, f"compute_tokens {r.metadata.compute_tokens}")
        check(r.metadata.total_time_ns >= r.metadata.inference_time_ns > 0, "timing metadata")
    answers = streamed("EmbedStream", embed_stub.EmbedStream, [pb.EmbedRequest(inputs=t, normalize=normalize) for t in TEXTS])
    check(len(answers) == len(TEXTS), f"EmbedStream answered {len(answers)}")
    for text, r, want in zip(TEXTS, answers, expected):
        close(r.embeddings, want, f"EmbedStream normalize={normalize} {text!r}")

# The unary call carries TEI's timing headers as response metadata.
_, call = embed_stub.Embed.with_call(pb.EmbedRequest(inputs="hello", normalize=True), metadata=md())
headers = dict(call.initial_metadata())
check(headers.get("x-compute-characters") == "5", f"x-compute-characters in {headers}")
check(int(headers.get("x-compute-tokens", "0")) > 2, f"x-compute-tokens in {headers}")

# EmbedAll / EmbedAllStream: /embed_all's per-token vectors.
expected = http("/embed_all", {"inputs": TEXTS})
for text, want in zip(TEXTS, expected):
    r = unary("EmbedAll", embed_stub.EmbedAll, pb.EmbedAllRequest(inputs=text))
    check(len(r.token_embeddings) == len(want), f"EmbedAll {text!r}: {len(r.token_embeddings)} tokens vs {len(want)}")
    for i, (got, w) in enumerate(zip(r.token_embeddings, want)):
        close(got.embeddings, w, f"EmbedAll {text!r} token {i}")
answers = streamed("EmbedAllStream", embed_stub.EmbedAllStream, [pb.EmbedAllRequest(inputs=t) for t in TEXTS])
check(len(answers) == len(TEXTS), "EmbedAllStream count")
for text, r, want in zip(TEXTS, answers, expected):
    check(len(r.token_embeddings) == len(want), "EmbedAllStream tokens")
    for got, w in zip(r.token_embeddings, want):
        close(got.embeddings, w, f"EmbedAllStream {text!r}")

# EmbedSparse / EmbedSparseStream: /embed_sparse's non-zero entries.
expected = http("/embed_sparse", {"inputs": TEXTS, "model": "splade"})


def sparse_close(got, want, what):
    check([v.index for v in got] == [w["index"] for w in want], f"{what}: indices differ")
    close([v.value for v in got], [w["value"] for w in want], what)


for text, want in zip(TEXTS, expected):
    check(len(want) > 0, "a SPLADE vector with entries")
    r = unary("EmbedSparse", embed_stub.EmbedSparse, pb.EmbedSparseRequest(inputs=text), model="splade")
    sparse_close(r.sparse_embeddings, want, f"EmbedSparse {text!r}")
answers = streamed("EmbedSparseStream", embed_stub.EmbedSparseStream, [pb.EmbedSparseRequest(inputs=t) for t in TEXTS], model="splade")
check(len(answers) == len(TEXTS), "EmbedSparseStream count")
for text, r, want in zip(TEXTS, answers, expected):
    sparse_close(r.sparse_embeddings, want, f"EmbedSparseStream {text!r}")


def predictions_close(got, want, what):
    check([p.label for p in got] == [w["label"] for w in want], f"{what}: labels {[p.label for p in got]} vs {want}")
    close([p.score for p in got], [w["score"] for w in want], what)


# Predict / PredictStream: the classifier's /predict, probabilities and raw scores.
for raw in (False, True):
    for text in TEXTS:
        want = http("/predict", {"inputs": text, "model": "classifier", "raw_scores": raw})
        r = unary("Predict", predict_stub.Predict, pb.PredictRequest(inputs=text, raw_scores=raw), model="classifier")
        check(len(want) >= 2, "the classifier has labels")
        predictions_close(r.predictions, want, f"Predict raw={raw} {text!r}")
    answers = streamed("PredictStream", predict_stub.PredictStream, [pb.PredictRequest(inputs=t, raw_scores=raw) for t in TEXTS], model="classifier")
    check(len(answers) == len(TEXTS), "PredictStream count")
    for text, r in zip(TEXTS, answers):
        want = http("/predict", {"inputs": text, "model": "classifier", "raw_scores": raw})
        predictions_close(r.predictions, want, f"PredictStream raw={raw} {text!r}")

# PredictPair / PredictPairStream: the cross-encoder's /predict of a pair.
pairs = [["what is a cat", t] for t in TEXTS]
for pair in pairs:
    want = http("/predict", {"inputs": pair, "model": "reranker"})
    r = unary("PredictPair", predict_stub.PredictPair, pb.PredictPairRequest(inputs=pair), model="reranker")
    predictions_close(r.predictions, want, f"PredictPair {pair}")
answers = streamed("PredictPairStream", predict_stub.PredictPairStream, [pb.PredictPairRequest(inputs=p) for p in pairs], model="reranker")
check(len(answers) == len(pairs), "PredictPairStream count")
for pair, r in zip(pairs, answers):
    predictions_close(r.predictions, http("/predict", {"inputs": pair, "model": "reranker"}), f"PredictPairStream {pair}")
check(
    code_of(lambda: predict_stub.PredictPair(pb.PredictPairRequest(inputs=["only one"]), metadata=md("reranker"))) == grpc.StatusCode.INVALID_ARGUMENT,
    "PredictPair of one text is INVALID_ARGUMENT",
)


def ranks_close(got, want, what, with_text):
    check([r.index for r in got] == [w["index"] for w in want], f"{what}: order {[r.index for r in got]} vs {[w['index'] for w in want]}")
    close([r.score for r in got], [w["score"] for w in want], what)
    if with_text:
        check([r.text for r in got] == [w["text"] for w in want], f"{what}: texts")
    else:
        check(all(not r.HasField("text") for r in got), f"{what}: no texts unless asked")


# Rerank / RerankStream: /rerank's order and scores.
query = "what is a cat"
for raw, with_text in ((False, True), (True, False)):
    want = http("/rerank", {"query": query, "texts": TEXTS, "model": "reranker", "raw_scores": raw, "return_text": with_text})
    r = unary("Rerank", rerank_stub.Rerank, pb.RerankRequest(query=query, texts=TEXTS, raw_scores=raw, return_text=with_text), model="reranker")
    ranks_close(r.ranks, want, f"Rerank raw={raw}", with_text)
    called.add("RerankStream")
    stream = [pb.RerankStreamRequest(query=query, text=t, raw_scores=raw, return_text=with_text) for t in TEXTS]
    r = rerank_stub.RerankStream(iter(stream), metadata=md("reranker"), timeout=60)
    ranks_close(r.ranks, want, f"RerankStream raw={raw}", with_text)
# A stream with two queries: each pair scored against its own query, indices in stream order.
other = "where is the fox"
stream = [pb.RerankStreamRequest(query=q, text=t) for q, t in [(query, TEXTS[0]), (other, TEXTS[2]), (query, TEXTS[1])]]
r = rerank_stub.RerankStream(iter(stream), metadata=md("reranker"), timeout=60)
first = {w["index"]: w["score"] for w in http("/rerank", {"query": query, "texts": TEXTS[:2], "model": "reranker"})}
second = http("/rerank", {"query": other, "texts": [TEXTS[2]], "model": "reranker"})[0]["score"]
by_index = {rank.index: rank.score for rank in r.ranks}
check(sorted(by_index) == [0, 1, 2], f"RerankStream with two queries: indices {sorted(by_index)}")
close([by_index[0], by_index[2], by_index[1]], [first[0], first[1], second], "RerankStream with two queries")
check([rank.score for rank in r.ranks] == sorted(by_index.values(), reverse=True), "RerankStream ranks best first")

# Tokenize / TokenizeStream: /tokenize's ids; special tokens flagged and left out on request.
expected = http("/tokenize", {"inputs": TEXTS})
for text, want in zip(TEXTS, expected):
    r = unary("Tokenize", tokenize_stub.Tokenize, pb.EncodeRequest(inputs=text, add_special_tokens=True))
    check([t.id for t in r.tokens] == [w["id"] for w in want], f"Tokenize {text!r} ids")
    check([t.text for t in r.tokens] == [w["text"] for w in want], f"Tokenize {text!r} texts")
    check(r.tokens[0].special and r.tokens[-1].special, f"Tokenize {text!r}: [CLS] and [SEP] are special")
    check(not any(t.special for t in r.tokens[1:-1]), f"Tokenize {text!r}: the words are not special")
    r = unary("Tokenize", tokenize_stub.Tokenize, pb.EncodeRequest(inputs=text, add_special_tokens=False))
    check([t.id for t in r.tokens] == [w["id"] for w in want[1:-1]], f"Tokenize {text!r} without special tokens")
answers = streamed("TokenizeStream", tokenize_stub.TokenizeStream, [pb.EncodeRequest(inputs=t, add_special_tokens=True) for t in TEXTS])
check([[t.id for t in r.tokens] for r in answers] == [[w["id"] for w in want] for want in expected], "TokenizeStream ids")

# Decode / DecodeStream: /decode's texts.
ids = [[w["id"] for w in want] for want in expected]
for skip in (True, False):
    want = http("/decode", {"ids": ids, "skip_special_tokens": skip})
    got = [unary("Decode", tokenize_stub.Decode, pb.DecodeRequest(ids=i, skip_special_tokens=skip)).text for i in ids]
    check(got == want, f"Decode skip={skip}: {got} vs {want}")
    answers = streamed("DecodeStream", tokenize_stub.DecodeStream, [pb.DecodeRequest(ids=i, skip_special_tokens=skip) for i in ids])
    check([a.text for a in answers] == want, f"DecodeStream skip={skip}")
check(http("/decode", {"ids": ids[0], "skip_special_tokens": True})[0] == TEXTS[0], "decode gives the text back")

# Errors.
codes = {}
req = pb.EmbedRequest(inputs="x")
codes["wrong key"] = code_of(lambda: embed_stub.Embed(req, metadata=[("authorization", "Bearer not-the-key")]))
codes["no key"] = code_of(lambda: embed_stub.Embed(req))
codes["no key, Info"] = code_of(lambda: info_stub.Info(pb.InfoRequest()))
codes["no key, stream"] = code_of(lambda: list(embed_stub.EmbedStream(iter([req]))))
too_many = pb.RerankRequest(query="q", texts=["a", "b", "c", "d", "e"])
codes["5 texts over max_inputs 4"] = code_of(lambda: rerank_stub.Rerank(too_many, metadata=md("reranker")))
codes["no texts"] = code_of(lambda: rerank_stub.Rerank(pb.RerankRequest(query="q"), metadata=md("reranker")))
codes["rerank on an embedder"] = code_of(lambda: rerank_stub.Rerank(pb.RerankRequest(query="q", texts=["a"]), metadata=md()))
codes["unknown model"] = code_of(lambda: embed_stub.Embed(req, metadata=md("no-such-model")))
left = pb.EmbedRequest(inputs="x", truncation_direction=pb.TRUNCATION_DIRECTION_LEFT)
codes["left truncation"] = code_of(lambda: embed_stub.Embed(left, metadata=md()))
codes["bad priority"] = code_of(lambda: embed_stub.Embed(req, metadata=md() + [("x-embed-priority", "urgent")]))
codes["bulk priority"] = code_of(lambda: embed_stub.Embed(req, metadata=md() + [("x-embed-priority", "bulk")]))
codes["too long, no truncation"] = code_of(lambda: embed_stub.Embed(pb.EmbedRequest(inputs="word " * 5000), metadata=md()))
codes["a message over --max-body-bytes"] = code_of(lambda: embed_stub.Embed(pb.EmbedRequest(inputs="x" * 70_000), metadata=md()))
codes["a stream's bad message"] = code_of(lambda: list(embed_stub.EmbedStream(iter([req, left]), metadata=md())))

# Over the concurrency limit (1): an HTTP request whose body is still on its way holds the one
# slot, so a unary call is refused with RESOURCE_EXHAUSTED (HTTP's 429), as TEI maps it.
host, port = HTTP_BASE.removeprefix("http://").split(":")
deadline = time.monotonic() + 20
while True:
    slow = socket.create_connection((host, int(port)))
    slow.sendall(
        f"POST /embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{".encode()
    )
    # Held once the server has admitted it and waits for the rest of the body: no answer comes.
    # An answer (a 429 because another call held the slot just then) means try again.
    slow.settimeout(0.5)
    try:
        answered = slow.recv(64)
    except socket.timeout:
        break
    slow.close()
    check(time.monotonic() < deadline, f"the slow HTTP request was never admitted (last answer: {answered!r})")
    time.sleep(0.05)
while (c := code_of(lambda: embed_stub.Embed(req, metadata=md()))) != grpc.StatusCode.RESOURCE_EXHAUSTED:
    check(time.monotonic() < deadline, f"never RESOURCE_EXHAUSTED while the slot is held (last: {c})")
    time.sleep(0.05)
codes["over the concurrency limit"] = c
slow.close()
deadline = time.monotonic() + 20
while code_of(lambda: embed_stub.Embed(req, metadata=md())) != grpc.StatusCode.OK:
    check(time.monotonic() < deadline, "the slot never came back")
    time.sleep(0.05)

S = grpc.StatusCode
expected_codes = {
    "wrong key": S.UNAUTHENTICATED,
    "no key": S.UNAUTHENTICATED,
    "no key, Info": S.UNAUTHENTICATED,
    "no key, stream": S.UNAUTHENTICATED,
    "5 texts over max_inputs 4": S.INVALID_ARGUMENT,
    "no texts": S.INVALID_ARGUMENT,
    "rerank on an embedder": S.UNIMPLEMENTED,
    "unknown model": S.NOT_FOUND,
    "left truncation": S.INVALID_ARGUMENT,
    "bad priority": S.INVALID_ARGUMENT,
    "bulk priority": S.OK,
    "too long, no truncation": S.OK,
    "a stream's bad message": S.INVALID_ARGUMENT,
    "a message over --max-body-bytes": S.OUT_OF_RANGE,
    "over the concurrency limit": S.RESOURCE_EXHAUSTED,
}
for what, want in expected_codes.items():
    check(codes[what] == want, f"{what}: {codes[what]} (expected {want})")

# The calls are counted in /metrics under their method paths.
metrics = http("/metrics")
for path in ("/tei.v1.Embed/Embed", "/tei.v1.Rerank/RerankStream", "/tei.v1.Tokenize/Decode", "/tei.v1.Predict/PredictPair"):
    check(f'route="{path}"' in metrics, f"{path} in /metrics")
check('route="/tei.v1.Embed/Embed",status="429"' in metrics, "the refused call counted as 429")

print(json.dumps({"called": sorted(called), "checks": checks, "codes": {k: v.name for k, v in codes.items()}}))
