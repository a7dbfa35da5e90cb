#!/usr/bin/env python3
"""Load on a running `sdtp serve`: streamed chat requests at several concurrency levels, side by side.

For each level C, C client threads each send requests/C streaming chat requests back to back
(distinct prompts, greedy, max_tokens fixed, a stop string that never occurs so every request
generates exactly max_tokens). Prints one table row per level: requests, completion tokens, wall
time, aggregate tokens/s, speedup over level 1 (the same requests one at a time), time to first
token p50/p99 and the time between tokens p50, all measured by the client. Standard library only
(runs on the GPU host, which has no PyPI).

  python3 bench/server_load.py --url http://127.0.0.1:8080 --levels 1,8,32,64 --requests 64
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


def stream_one(host, port, body):
    """Sends one streaming request; returns (ttft_s, [inter-token gaps], n_pieces, finish, text)."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:300]!r}")
    ttft, last, gaps, n, finish, text = None, None, [], 0, None, ""
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: "):
                continue
            data = event[6:]
            if data == b"[DONE]":
                conn.close()
                return ttft, gaps, n, finish, text
            j = json.loads(data)
            if "error" in j:
                raise RuntimeError(j["error"]["message"])
            if not j["choices"]:
                continue
            ch = j["choices"][0]
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
            if ch.get("delta", {}).get("content"):
                text += ch["delta"]["content"]
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - t0
                else:
                    gaps.append(now - last)
                last = now
                n += 1  # pieces; usage below counts tokens
    conn.close()
    raise RuntimeError("stream ended without [DONE]")


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def run_level(host, port, level, requests, max_tokens, prompt_words, seed0):
    per_thread = max(1, requests // level)
    results, errors = [], []
    lock = threading.Lock()

    def client(t):
        for k in range(per_thread):
            i = seed0 + t * per_thread + k
            words = " ".join(f"item{(i * 31 + w) % 997}" for w in range(prompt_words))
            body = {"messages": [{"role": "user", "content": f"Request {i}. Summarise this list: {words}"}],
                    "max_tokens": max_tokens, "temperature": 0, "stream": True, "stop": ["\u2603\u2603\u2603"]}
            try:
                r = stream_one(host, port, body)
                with lock:
                    results.append((i, r))
            except Exception as e:  # reported, the run goes on
                with lock:
                    errors.append(str(e))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(level)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return results, errors, wall, per_thread * level


def completion_tokens(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith("sdtp_completion_tokens_total "):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--levels", default="1,8,32,64", help="comma-separated concurrency levels")
    ap.add_argument("--requests", type=int, default=64, help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=200, help="words of list in each prompt")
    ap.add_argument("--label", default="", help="a name for the table's caption")
    ap.add_argument("--json", help="write the rows here too")
    ap.add_argument("--check", action="store_true",
                    help="every level sends the same prompts; count replies that differ from level 1's (greedy: none should)")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port or 80
    levels = [int(x) for x in a.levels.split(",")]
    rows = []
    print(f"server load{(' — ' + a.label) if a.label else ''}: {a.requests} streamed chat requests per level, "
          f"max_tokens {a.max_tokens}, ~{a.prompt_words} list words per prompt, greedy")
    print("| concurrent | requests | tokens | wall s | tokens/s | speedup vs 1 | TTFT p50 ms | TTFT p99 ms | "
          "inter-token p50 ms | errors | differ from level 1 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    reference = None
    for i, level in enumerate(levels):
        before = completion_tokens(host, port)
        results, errors, wall, sent = run_level(host, port, level, a.requests, a.max_tokens, a.prompt_words,
                                               0 if a.check else i * 100000)
        tokens = completion_tokens(host, port) - before
        tps = tokens / wall if wall > 0 else 0.0
        if base is None:
            base = tps
        texts = {k: r[4] for k, r in results}
        if reference is None:
            reference = texts
        differ = sum(1 for k, t in texts.items() if k in reference and reference[k] != t) if a.check else 0
        results = [r for _, r in results]
        ttfts = [r[0] for r in results if r[0] is not None]
        gaps = [g for r in results for g in r[1]]
        row = {"concurrent": level, "requests": sent, "tokens": tokens, "wall_s": wall, "tokens_per_s": tps,
               "speedup": tps / base if base else 0.0, "ttft_p50_ms": 1e3 * pct(ttfts, 50),
               "ttft_p99_ms": 1e3 * pct(ttfts, 99), "inter_token_p50_ms": 1e3 * pct(gaps, 50), "errors": len(errors),
               "differ": differ if a.check else None}
        rows.append(row)
        print(f"| {level} | {sent} | {tokens} | {wall:.2f} | {tps:.1f} | {row['speedup']:.2f}x | "
              f"{row['ttft_p50_ms']:.1f} | {row['ttft_p99_ms']:.1f} | {row['inter_token_p50_ms']:.2f} | {len(errors)} | "
              f"{differ if a.check else '-'} |",
              flush=True)
        for e in errors[:3]:
            print(f"  error: {e}", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
