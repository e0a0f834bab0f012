"""The peer of `cargo bench --bench tokenize`: Python `tokenizers` (the fast tokenizer TRL's
SFTTrainer uses) encoding the same texts with the same tokenizer, replicated the same way.
Prints one JSON object. Usage: bench_tokenize.py DIR EXAMPLES (DIR holds tokenizer.json and
texts.json as the Rust bench wrote them)."""
import json
import os
import sys
import time

from tokenizers import Tokenizer


def weighted(ids):
    return sum(i * (k % 7919 + 1) for k, i in enumerate(ids))


def main():
    folder, n = sys.argv[1], int(sys.argv[2])
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    pairs = json.load(open(os.path.join(folder, "texts.json")))
    prompts = [pairs[i % len(pairs)][0] for i in range(n)]
    completions = [pairs[i % len(pairs)][1] for i in range(n)]
    # As TRL's SFTTrainer tokenizes through datasets.map(batched=True): batches of 1,000,
    # each encoded with encode_batch; only the ids are kept (here: counted and summed, as
    # 200,000 examples of Encoding objects would not fit in memory).
    tokens = 0
    checksum = 0
    seconds = 0.0
    for start in range(0, n, 1000):
        t0 = time.perf_counter()
        p = tok.encode_batch(prompts[start:start + 1000], add_special_tokens=False)
        c = tok.encode_batch(completions[start:start + 1000], add_special_tokens=False)
        batch = [a.ids + b.ids for a, b in zip(p, c)]
        seconds += time.perf_counter() - t0
        for ids in batch:
            tokens += len(ids)
            checksum = (checksum + weighted(ids)) % (1 << 64)
    print(json.dumps({
        "tool": "tokenizers (Python) " + __import__("tokenizers").__version__,
        "examples": n,
        "tokens": tokens,
        "seconds": seconds,
        "examples_per_s": n / seconds,
        "tokens_per_s": tokens / seconds,
        "threads": os.environ.get("RAYON_RS_NUM_THREADS", "all"),
        "checksum": checksum,
    }))


if __name__ == "__main__":
    main()
