"""Build (or open) an edgec artifact, stream a continuation and score perplexity, from Python.

    python examples/python/generate.py [MODEL] -o build/example          # build MODEL, then generate
    python examples/python/generate.py --artifact build/smollm2-c -p "The capital of France is"
    python examples/python/generate.py --artifact build/smollm2-c --text ../shared/data/wikitext-2-raw/wiki.test.raw

MODEL: a Hugging Face folder or a .gguf file; none builds the embedded SmolLM2-135M-Instruct.
--json prints one JSON object (ids, text, speed, perplexity) instead of streaming the text.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import edgec
from edgec.runtime import Detokenizer  # text per token without re-decoding everything (as `edgec run`)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="model to build (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("-o", "--output", default="build/example-python", help="where the build writes the artifact")
    ap.add_argument("--artifact", help="open this artifact instead of building")
    ap.add_argument("--backend", default="c", help="onnx, tvm, c or reference (default: c)")
    ap.add_argument("--recipe", default="int4", help="see `edgec recipes` (default: int4)")
    ap.add_argument("--device", default="host")
    ap.add_argument("-p", "--prompt", default="The capital of France is")
    ap.add_argument("-n", "--max-new-tokens", type=int, default=32)
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--text", type=Path, help="also score perplexity on this text file")
    ap.add_argument("--window", type=int, default=512, help="tokens per perplexity window")
    ap.add_argument("--max-tokens", type=int, default=4096, help="score at most this many tokens of --text")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    args = ap.parse_args()

    # 1. An artifact: build one (signed with your key, so it loads without --allow-unsigned) or open one.
    if args.artifact:
        path = Path(args.artifact)
    else:
        say = (lambda msg: print(msg, file=sys.stderr)) if not args.json else None
        path = edgec.build(args.model, args.output, device=args.device, backend=args.backend,
                           recipe=args.recipe, progress=say)
    model = edgec.load(path)  # verifies every file and the signature

    # 2. Generate: stream() yields token ids as they are sampled; Detokenizer turns them into text.
    prompt_ids = model.encode(args.prompt, chat=args.chat)
    detok, new, pieces = Detokenizer(model.tokenizer), [], []
    t0 = t_first = time.perf_counter()
    for tok in model.stream(prompt_ids, args.max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, seed=args.seed):
        if not new:
            t_first = time.perf_counter()  # the prompt's prefill is done: the first token is out
        new.append(tok)
        if tok in model.eos_token_ids:
            break
        pieces.append(detok.add(tok))
        if not args.json:
            print(pieces[-1], end="", flush=True)
    t_end = time.perf_counter()
    decode = (len(new) - 1) / (t_end - t_first) if len(new) > 1 else 0.0
    result = {"artifact": str(path), "prompt_ids": prompt_ids, "ids": new, "text": "".join(pieces),
              "prefill_s": t_first - t0, "decode_tokens_per_s": decode}
    if not args.json:
        print()
        print(f"{len(prompt_ids)} prompt tokens in {t_first - t0:.3f} s; {len(new)} new, decode "
              f"{decode:.1f} tokens/s", file=sys.stderr)

    # 3. Perplexity: edgec.evaluate runs `edgec eval`'s protocol (whole windows, no BOS); the same
    #    number for the first window by hand from model.logits shows what it computes.
    if args.text:
        r = edgec.evaluate(path, text=args.text, window=args.window, max_tokens=args.max_tokens, reference=False)
        body = args.text.read_text(encoding="utf-8").replace("\r\n", "\n")
        window = model.encode(body)[:args.window]
        logits = model.logits(window).astype(np.float64)                     # [window, vocab]
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))                  # log-softmax
        nll = -logp[np.arange(len(window) - 1), window[1:]].mean()           # each position predicts the next
        result.update(perplexity=r.perplexity, windows=r.windows, first_window_perplexity=float(np.exp(nll)))
        if not args.json:
            print(f"perplexity {r.perplexity:.3f} over {r.windows} windows of {r.window} tokens "
                  f"(first window, by hand: {result['first_window_perplexity']:.3f})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except edgec.EdgecError as e:  # bad input: one line, as the CLI does
        print(f"generate.py: error: {e}", file=sys.stderr)
        sys.exit(2)
