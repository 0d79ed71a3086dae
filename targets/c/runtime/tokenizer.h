/* tokenizer.h - a dependency-free C99 tokenizer for edgec's C runtime.
 *
 * Reads a Hugging Face tokenizer.json and gives the ids the `tokenizers` library gives:
 *   - model BPE (byte-level like GPT-2/Llama-3/Qwen2/SmolLM, or SentencePiece-style with
 *     byte_fallback like Llama-2/Mistral/Gemma), merges in either JSON encoding;
 *   - normalizers Sequence, Prepend, Replace (string pattern), Strip, NFC;
 *   - pre-tokenizers Sequence, ByteLevel, Split (the GPT-2, Llama-3 and Qwen2 regexes, recognised
 *     by their text and implemented by hand), Digits, Metaspace, Whitespace, WhitespaceSplit;
 *   - added tokens (split out first, leftmost-longest, lstrip/rstrip/single_word/normalized);
 *   - post-processors TemplateProcessing, ByteLevel, Roberta/Bert, Sequence (used when add_bos);
 *   - decoders Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip.
 * Anything else makes ec_tokenizer_load fail with a message naming it.
 *
 * Strings are UTF-8 byte strings with an explicit length. A loaded tokenizer is read-only: every
 * function may be called from several threads at once.
 *
 * Return convention of ec_tokenize / ec_detokenize / ec_chat_prompt: the full length of the result
 * (ids or bytes); if it is larger than the buffer, only the buffer's size was written (call again
 * with a bigger one); < 0 on error. The byte-returning functions add a NUL after the result when
 * it fits (return value < cap).
 */
#ifndef EC_TOKENIZER_H
#define EC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ec_tokenizer ec_tokenizer;

/* Loads tokenizer.json. Also reads bos_token / eos_token from a tokenizer_config.json in the same
 * folder when there is one. NULL and a one-line message in err on error. */
ec_tokenizer *ec_tokenizer_load(const char *tokenizer_json_path, char *err, size_t errlen);
ec_tokenizer *ec_tokenizer_from_json(const char *json, size_t len, char *err, size_t errlen);
void ec_tokenizer_free(ec_tokenizer *t);

/* add_bos: 0 = no special tokens (HF add_special_tokens=False);
 *          1 = EC_ADD_SPECIAL: the special tokens of the file's post_processor for one sequence
 *              (HF add_special_tokens=True; for SmolLM2 that adds nothing);
 *          2 = EC_ADD_BOS: as 1, and BOS (ec_bos_id) first if the template did not put it there. */
#define EC_ADD_SPECIAL 1
#define EC_ADD_BOS 2
int ec_tokenize(const ec_tokenizer *t, const char *text, size_t len, int add_bos, int32_t *ids, int max_ids);

/* Raw bytes of one token, as the decoder turns it into text but without the whole-sequence steps
 * (no stripping of the first space, no UTF-8 repair: a byte-level token may end inside a UTF-8
 * character). Added/special tokens give their text. Length, or -1 for a bad id. */
int ec_token_bytes(const ec_tokenizer *t, int32_t id, char *buf, int cap);

/* HF decode(ids, skip_special_tokens=skip_special): unknown ids are skipped as HF does. */
int ec_detokenize(const ec_tokenizer *t, const int32_t *ids, int n, int skip_special, char *out, int cap);

int ec_token_id(const ec_tokenizer *t, const char *token); /* -1 if absent */
int ec_vocab_size(const ec_tokenizer *t);                  /* highest id + 1 (model and added tokens) */
int ec_bos_id(const ec_tokenizer *t);                      /* -1 if none */
int ec_eos_id(const ec_tokenizer *t);                      /* -1 if none */
int ec_is_special(const ec_tokenizer *t, int32_t id);      /* 1 for added tokens marked special */

/* The prompt SmolLM2-135M-Instruct's chat template makes of one user message with
 * add_generation_prompt=True (ChatML with its default system message). t may be NULL; if given,
 * it must have the <|im_start|> and <|im_end|> tokens (else -1). */
int ec_chat_prompt(const ec_tokenizer *t, const char *user_text, char *out, int cap);

#ifdef __cplusplus
}
#endif

#endif
