#!/usr/bin/env bash
# The edgec command line, step by step: build a C artifact for this machine, look inside it, generate,
# measure quality and speed, then run it with no Python at all.
#
#   bash examples/cli.sh [MODEL] [OUTDIR]
#
# MODEL: a Hugging Face folder or a .gguf file; empty ("") builds the embedded SmolLM2-135M-Instruct.
# OUTDIR: the artifact folder to write (default build/cli-example).
# Settings from the environment: RECIPE (default int4), PROMPT, N (new tokens), TEXT (the evaluation
# text; default WikiText-2's test split in ../shared/data beside the repository), MAX_TOKENS and WINDOW
# (eval), PROMPT_TOKENS and NEW_TOKENS (profile). A model with a short context needs a smaller WINDOW.
set -euo pipefail

MODEL=${1:-}
OUT=${2:-build/cli-example}
RECIPE=${RECIPE:-int4}
PROMPT=${PROMPT:-The capital of France is}
N=${N:-32}
HERE=$(cd "$(dirname "$0")" && pwd)
TEXT=${TEXT:-${EDGEC_DATA_DIR:-$HERE/../../shared/data}/wikitext-2-raw/wiki.test.raw}
MAX_TOKENS=${MAX_TOKENS:-8192}
WINDOW=${WINDOW:-512}
PROMPT_TOKENS=${PROMPT_TOKENS:-64}
NEW_TOKENS=${NEW_TOKENS:-32}

step() { printf '\n== %s\n' "$*"; }

# 1. Compile: trace the model, quantize it by the recipe, generate C for this exact model and compile it
#    with edgec's runtime. The artifact is signed with your key (~/.config/edgec/keys, made on first use);
#    a C artifact is native code, so edgec runs it only when it is signed by a key you trust.
step "edgec build ${MODEL:-(the embedded SmolLM2-135M-Instruct)} --backend c --recipe $RECIPE -o $OUT"
edgec build ${MODEL:+"$MODEL"} --backend c --recipe "$RECIPE" -o "$OUT" -q

# 2. What is inside: the signer, the manifest, the sizes and the graph's op counts (runs nothing).
step "edgec inspect $OUT"
edgec inspect "$OUT"

# 3. Generate from Python (the library loaded with ctypes); temperature 0, the default, is greedy.
#    --stats: prefill and decode speed on stderr. Add --chat for an instruction model's chat template.
step "edgec run $OUT -p \"$PROMPT\" -n $N --stats"
edgec run "$OUT" -p "$PROMPT" -n "$N" --stats

# 4. Quality: perplexity on WikiText-2 in windows of WINDOW tokens, with KL divergence and top-1
#    agreement against the source model in fp32 (--no-reference skips that: faster).
if [[ -f $TEXT ]]; then
    step "edgec eval $OUT --text $TEXT --max-tokens $MAX_TOKENS --window $WINDOW"
    edgec eval "$OUT" --text "$TEXT" --max-tokens "$MAX_TOKENS" --window "$WINDOW" -q
else
    step "edgec eval: skipped, no evaluation text at $TEXT (set TEXT=FILE)"
fi

# 5. Speed: wall-clock prefill and decode, then the time per operator from the runtime's own timers.
step "edgec profile $OUT --prompt-tokens $PROMPT_TOKENS --new-tokens $NEW_TOKENS"
edgec profile "$OUT" --prompt-tokens "$PROMPT_TOKENS" --new-tokens "$NEW_TOKENS" --top 6

# 6. No Python: the artifact's own program over the C API (model/edgec-run, linked with libedgec.a).
#    Copy the artifact folder to a device built for (--device rpi5, pixel8) and run the same there.
step "$OUT/model/edgec-run $OUT -p \"$PROMPT\" -n $N --stats"
"$OUT/model/edgec-run" "$OUT" -p "$PROMPT" -n "$N" --stats

# Next: your own C program on the same library, examples/c (make ARTIFACT=...).
step "done: $OUT; a C program of your own: make -C $HERE/c ARTIFACT=$(cd "$OUT" && pwd)"
