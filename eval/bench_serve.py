"""Load test of `reasonlm serve`: N concurrent clients on localhost for a bounded time, against the
engine's batched throughput (what `reasonlm eval` runs) on the same model and prompts.

    OMP_NUM_THREADS=1 python eval/bench_serve.py --model out/tiny-cpu/base \
        --adapter out/tiny-cpu/train/adapter --data out/tiny-cpu/data --clients 16 --seconds 60
    python eval/bench_serve.py --toy --clients 4 --seconds 3      # smoke test on a random toy model

The server runs in this process (port 0, its own scheduler thread, continuous batching); each
client is a thread that posts /v1/chat/completions (greedy, not streamed, max_tokens --max-tokens)
with the next question of the test split, waits for the answer and asks again, until --seconds
have passed; then every request in flight is waited for. A request counts as answered when it
gets a 200 with a finish_reason; anything else (an error status, a broken connection, a timeout)
is lost. Printed: requests sent, answered and lost; latency p50/p99; requests/s and answer
tokens/s over the whole run. Then the baseline: the same questions, as many as were answered,
through KVCacheEngine.generate in batches of --eval-batch (the engine call `reasonlm eval` makes),
with the same budget. Exit status 1 when any request was lost.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import load_from_disk  # noqa: E402

from bench_generate import toy_model_and_rows  # noqa: E402  (the toy the generation benchmark uses)
from reasonlm.answer import encode_prompt, prompt_messages  # noqa: E402
from reasonlm.config import ServeConfig  # noqa: E402
from reasonlm.engine import SamplingParams, engine_for  # noqa: E402
from reasonlm.model import load_adapter  # noqa: E402
from reasonlm.serve import start  # noqa: E402


def questions(args) -> tuple:
    """(model, tokenizer, questions): the run's test split, or a random toy model and toy questions."""
    if args.toy:
        model, tok, rows = toy_model_and_rows(64)
        return model, tok, [r["question"] for r in rows]
    model, tok = load_adapter(args.model, args.adapter or None)
    return model, tok, list(load_from_disk(args.data)[args.split]["question"])


def client(base: str, qs: list[str], start_at: int, stop_at: float, max_tokens: int, log: list, lock) -> None:
    i = start_at
    while time.monotonic() < stop_at:
        body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": qs[i % len(qs)]}],
                           "max_tokens": max_tokens, "temperature": 0}).encode()
        t0 = time.monotonic()
        try:
            req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                reply = json.loads(r.read())
            ok = r.status == 200 and reply["choices"][0]["finish_reason"] in ("stop", "length")
            tokens = reply["usage"]["completion_tokens"]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
            ok, tokens = False, 0
            print(f"lost: {type(e).__name__}: {e}", file=sys.stderr)
        with lock:
            log.append((ok, time.monotonic() - t0, tokens))
        i += 1


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model")
    p.add_argument("--adapter", default="")
    p.add_argument("--data", help="a `reasonlm data` output folder")
    p.add_argument("--split", default="test")
    p.add_argument("--toy", action="store_true", help="a random toy model (smoke test)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    p.add_argument("--eval-batch", type=int, default=64, help="the baseline's batch size (eval's default)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    if not args.toy and not (args.model and args.data):
        p.error("give --model and --data (and --adapter), or --toy")
    model, tok, qs = questions(args)
    model.eval()
    srv = start(ServeConfig(model=args.model or "toy", port=0, max_tokens=args.max_tokens, name="bench",
                            max_concurrent=max(args.clients, 1), max_batch=args.max_batch), model, tok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    log, lock = [], threading.Lock()
    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(base, qs, k * 7, t0 + args.seconds, args.max_tokens, log, lock))
               for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    srv.shutdown()
    srv.server_close()
    answered = [(s, n) for ok, s, n in log if ok]
    lat = [s for s, _ in answered]
    serve = {"clients": args.clients, "seconds": round(wall, 1), "sent": len(log), "answered": len(answered),
             "lost": len(log) - len(answered), "p50_s": round(percentile(lat, 0.5), 3),
             "p99_s": round(percentile(lat, 0.99), 3), "requests_per_s": round(len(answered) / wall, 2),
             "tokens_per_s": round(sum(n for _, n in answered) / wall, 1)}

    # the baseline: the same questions, as many as were answered, in eval's batches
    n = max(1, len(answered))
    prompts = [encode_prompt(tok, prompt_messages(qs[i % len(qs)])) for i in range(n)]
    engine = engine_for(model, tok)
    t1 = time.monotonic()
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=args.max_tokens, batch_size=args.eval_batch))
    eval_s = time.monotonic() - t1
    batched = {"problems": n, "seconds": round(eval_s, 1), "problems_per_s": round(n / eval_s, 2),
               "tokens_per_s": round(sum(map(len, outs)) / eval_s, 1)}

    print("| | requests | answered | lost | p50 latency | p99 latency | requests/s | answer tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| serve, {args.clients} clients, {serve['seconds']} s | {serve['sent']} | {serve['answered']} | "
          f"{serve['lost']} | {serve['p50_s']} s | {serve['p99_s']} s | {serve['requests_per_s']} | "
          f"{serve['tokens_per_s']} |")
    print(f"| engine batched (eval), batch {args.eval_batch} | {n} | {n} | 0 | | | {batched['problems_per_s']} | "
          f"{batched['tokens_per_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"serve": serve, "batched": batched}, f, indent=1)
    return 1 if serve["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
