"""llama.cpp's side of bench/inference.sh: the same GGUF, the same prompt tokens, greedy,
N threads, through llama.cpp's C API (llama-cpp-python's bindings).

Concurrent streams run the way llama.cpp's own server runs parallel slots: one llama_batch
per step holding every stream's token, each stream its own sequence id in the KV cache.
TTFT: prompt(s) in -> first token. Decode: tokens after the first over the time after it;
aggregate: every stream's tokens over the whole time; both summed over streams. Prints one
JSON object: {"rows": [{"streams", "ttft_ms", "decode_tok_s", "aggregate_tok_s", "ids"}],
"peak_rss_mib"} (peak RSS of this Python process, the interpreter included).

Usage: python bench/llama_cpp.py MODEL.gguf PROMPT_IDS_JSON TOKENS RUNS THREADS STREAMS...
"""

import json
import resource
import sys
import time

import llama_cpp as L
import numpy as np


def run(model, vocab_n, prompt, streams, tokens, threads):
    cp = L.llama_context_default_params()
    cp.n_ctx = streams * (len(prompt) + tokens + 8)
    cp.n_batch = max(streams * len(prompt), 512)
    cp.n_ubatch = cp.n_batch
    cp.n_seq_max = streams
    cp.n_threads = threads
    cp.n_threads_batch = threads
    cp.kv_unified = False
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise SystemExit("llama_init_from_model failed")
    batch = L.llama_batch_init(cp.n_batch, 0, streams)

    def fill(entries):
        # entries: (token, pos, seq, wants_logits)
        batch.n_tokens = len(entries)
        for i, (tok, pos, seq, out) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if out else 0

    def argmax(i):
        ptr = L.llama_get_logits_ith(ctx, i)
        return int(np.ctypeslib.as_array(ptr, shape=(vocab_n,)).argmax())

    entries = []
    for s in range(streams):
        for p, tok in enumerate(prompt):
            entries.append((tok, p, s, p == len(prompt) - 1))
    # Warm-up: the first decode of a fresh context allocates its compute buffers; measure a
    # warm context, as a server's is (our engine's workspace is warm too).
    fill(entries)
    if L.llama_decode(ctx, batch) != 0:
        raise SystemExit("warm-up failed")
    L.llama_memory_clear(L.llama_get_memory(ctx), True)

    start = time.perf_counter()
    fill(entries)
    if L.llama_decode(ctx, batch) != 0:
        raise SystemExit("prefill failed")
    outs = [i for i, e in enumerate(entries) if e[3]]
    nxt = [argmax(i) for i in outs]
    first = time.perf_counter()
    generated = [[t] for t in nxt]
    for step in range(1, tokens):
        pos = len(prompt) + step - 1
        fill([(nxt[s], pos, s, True) for s in range(streams)])
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("decode failed")
        nxt = [argmax(s) for s in range(streams)]
        for s in range(streams):
            generated[s].append(nxt[s])
    end = time.perf_counter()
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    return {
        "ttft_ms": (first - start) * 1e3,
        "decode_tok_s": (tokens - 1) * streams / (end - first),
        "aggregate_tok_s": tokens * streams / (end - start),
        "ids": generated[0],
    }


def main():
    path, prompt_json, tokens, runs, threads = sys.argv[1:6]
    streams_list = [int(s) for s in sys.argv[6:]]
    prompt = json.loads(prompt_json)
    tokens, runs, threads = int(tokens), int(runs), int(threads)
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise SystemExit("cannot load " + path)
    vocab_n = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    rows = []
    for _ in range(runs):
        for s in streams_list:
            r = run(model, vocab_n, prompt, s, tokens, threads)
            r["streams"] = s
            rows.append(r)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": rows, "peak_rss_mib": peak_kib / 1024}))


if __name__ == "__main__":
    main()
