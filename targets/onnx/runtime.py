"""Run a compiled ONNX artifact with onnxruntime.

Two ways in: `OnnxExecutor.run(feeds)` is a plain session.run with the IR's
inputs (a cache of exactly `past` rows in, `past+seq` rows out: tests, eval);
`OnnxExecutor.sequence(capacity)` is the generation loop's fast path when the
model's attention is GroupQueryAttention (see lower_gqa.py): the KV cache is
allocated once and bound with IOBinding as both past and present, so a
decode step copies no cache and allocates nothing on the Python side.
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgec.artifact import as_files
from edgec.errors import ArtifactError, EdgecError
from edgec.memory import HugePages

from .compile import CONTEXT_KEY, DATA_FILE, MODEL_FILE
from .lower import LOGITS_ROWS
from .lower_gqa import KV_LAYOUT_KEY, SHARED_BUFFER

_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
           "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
           "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
       "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(double)": np.float64}

# The [onnx] table of a device profile (edgec/devices/*.toml); every key is optional.
SESSION_OPTIONS = {
    "intra_op_threads": int,      # 0: onnxruntime's default (one per physical core)
    "allow_spinning": bool,       # workers spin between ops: lower latency, more power
    "cpu_mem_arena": bool,        # reuse freed activation memory instead of malloc per run
    "graph_optimization": str,    # disable | basic | extended | all
    "accuracy_level": int,        # build time, not a session option: MatMulNBits' compute type (0-4)
    "huge_pages": bool,           # edgec, not onnxruntime: weights in 2 MiB pages (edgec/memory.py; default on)
}


def session_options(options: dict | None = None, threads: int | None = None) -> ort.SessionOptions:
    """SessionOptions from a device profile's [onnx] table; `threads` (e.g. --threads) wins."""
    options = dict(options or {})
    unknown = set(options) - set(SESSION_OPTIONS)
    if unknown:
        raise EdgecError(f"unknown [onnx] session option(s) {sorted(unknown)}; known: {sorted(SESSION_OPTIONS)}")
    if options.get("accuracy_level", 4) not in range(5):
        raise EdgecError(f"[onnx] accuracy_level must be 0-4, not {options['accuracy_level']!r}")
    level = options.get("graph_optimization", "all")
    if level not in _LEVELS:
        raise EdgecError(f"[onnx] graph_optimization must be one of {sorted(_LEVELS)}, not {level!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _LEVELS[level]
    n = threads or options.get("intra_op_threads") or 0
    if n:
        opts.intra_op_num_threads = int(n)
    if "cpu_mem_arena" in options:
        opts.enable_cpu_mem_arena = bool(options["cpu_mem_arena"])
    if "allow_spinning" in options:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if options["allow_spinning"] else "0")
    return opts


def _check_external_data(model_bytes: bytes, data_size: int) -> None:
    """Every external tensor must lie inside the artifact's one data file, nowhere else."""
    try:
        model = onnx.ModelProto.FromString(model_bytes)
    except Exception as e:  # noqa: BLE001 - protobuf's decode errors have no common base
        raise ArtifactError(f"{MODEL_FILE} is not a valid ONNX model ({type(e).__name__}); rebuild the artifact") from None
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ext = {e.key: e.value for e in t.external_data}
        offset, length = ext.get("offset", "0"), ext.get("length", "")
        if ext.get("location") != DATA_FILE or not (offset.isdigit() and length.isdigit()) \
                or int(offset) + int(length) > data_size:
            raise ArtifactError(f"{MODEL_FILE}: tensor {t.name!r} points outside {DATA_FILE} "
                                f"({ext.get('location')!r} at {offset}+{length}); rebuild the artifact")


def _session(files, model_bytes: bytes, data_size: int, make_opts, providers) -> ort.InferenceSession:
    """A session over the verified graph bytes and the verified weight file.

    onnxruntime reads the weights by name from the artifact's folder (it maps them, and refuses a
    link to a descriptor); that is the verified file if it is still the same inode before and
    after (files.is_current). If a rebuild swapped the folder meanwhile, the verified file is
    handed over from memory instead, at the cost of one more copy of the weights at load.
    """
    if not data_size:
        return ort.InferenceSession(model_bytes, sess_options=make_opts(), providers=providers)
    if files.is_current(DATA_FILE):
        by_name = make_opts()
        by_name.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(files.folder()))
        session = ort.InferenceSession(model_bytes, sess_options=by_name, providers=providers)
        if files.is_current(DATA_FILE):
            return session
        del session
    opts = make_opts()
    with open(files.path(DATA_FILE), "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        opts.add_external_initializers_from_files_in_memory([DATA_FILE], [data], [data_size])
        return ort.InferenceSession(model_bytes, sess_options=opts, providers=providers)


class OnnxExecutor:
    """An onnxruntime session over `model_dir/model.onnx` (weights load from model.onnx.data).

    CPU by default with every graph optimization on, which is what fuses the
    primitive decompositions (RMSNorm, Gelu, scaled MatMul) back into kernels.
    `options` is the device profile's [onnx] table (see SESSION_OPTIONS).
    """

    def __init__(self, model_dir, *, threads: int | None = None, providers=None,
                 options: dict | None = None, profile_prefix: str | None = None):
        """model_dir: a folder, or an artifact's verified model/ files (edgec.artifact.VerifiedFiles)."""
        files = as_files(model_dir)
        self.path = Path(files.path(MODEL_FILE))

        def make_opts() -> ort.SessionOptions:
            opts = session_options(options, threads)
            if profile_prefix:  # onnxruntime's per-node trace (edgec profile); session.end_profiling() writes it
                opts.enable_profiling = True
                opts.profile_file_prefix = str(profile_prefix)
            return opts

        make_opts()  # bad options fail here, before any file is read
        # The graph is parsed from the verified bytes; the weights are the verified file (see _session),
        # and every external tensor must point into it: onnxruntime reads nothing outside the manifest.
        model_bytes = files.read_bytes(MODEL_FILE)
        data_size = files.size(DATA_FILE) if files.exists(DATA_FILE) else 0
        _check_external_data(model_bytes, data_size)
        providers = providers or ["CPUExecutionProvider"]
        # the weights onnxruntime loads and prepacks here are what every decode step streams
        with HugePages(enabled=(options or {}).get("huge_pages", True)
                       and providers[0] == "CPUExecutionProvider") as self.huge_pages:
            self.session = _session(files, model_bytes, data_size, make_opts, providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        # True when past and present K/V may share one preallocated buffer (GroupQueryAttention).
        self.shared_kv = meta.get(KV_LAYOUT_KEY) == SHARED_BUFFER
        ctx = meta.get(CONTEXT_KEY)
        self.context_length = int(ctx) if ctx and ctx.isdigit() else None
        logits = next((o for o in self.session.get_outputs() if o.name == "logits"), None)
        self.vocab_size = logits.shape[-1] if logits is not None and isinstance(logits.shape[-1], int) else None
        self.graph_inputs = [n for n in self.input_names if n != LOGITS_ROWS]  # the IR's own inputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if LOGITS_ROWS in self.input_names and LOGITS_ROWS not in feeds and "input_ids" in feeds:
            feeds = {**feeds, LOGITS_ROWS: np.array([np.shape(feeds["input_ids"])[1]], np.int64)}  # every row
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"missing model input(s) {missing}")
        outs = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outs))

    def sequence(self, capacity: int) -> "OnnxSequence | None":
        """A KV cache of `capacity` tokens bound in place, or None if this model cannot share buffers."""
        return OnnxSequence(self, capacity) if self.shared_kv else None


class OnnxSequence:
    """One sequence: its KV buffers, allocated once, bound as both past_X and present_X.

    GroupQueryAttention writes each call's new rows at row `length` of the
    buffers in place. One-token steps reuse a binding whose input ids,
    position and logits arrays are preallocated, so a decode step does no
    Python-side work that depends on the context length.
    """

    def __init__(self, executor: OnnxExecutor, capacity: int):
        if capacity <= 0:
            raise EdgecError(f"KV capacity must be > 0, got {capacity}")
        self.session = executor.session
        self.capacity = int(capacity)
        self.length = 0
        self.buffers: dict[str, np.ndarray] = {}  # past name -> [1, kv_heads, capacity, head_dim]
        self._kv: dict[str, ort.OrtValue] = {}
        self._extra_outputs = []
        logits = None
        for i in self.session.get_inputs():
            if i.name.startswith("past_"):
                shape = [self.capacity if isinstance(d, str) or d is None else d for d in i.shape]
                # zeros: calloc'ed pages cost nothing until GQA writes them
                buf = np.zeros(shape, _NP[i.type])
                self.buffers[i.name] = buf
                self._kv[i.name] = ort.OrtValue.ortvalue_from_numpy(buf)
            elif i.name not in ("input_ids", "position_ids", LOGITS_ROWS):
                raise EdgecError(f"ONNX model input {i.name!r} is not one the generation loop feeds")
        for o in self.session.get_outputs():
            if o.name == "logits":
                logits = o
            elif not o.name.startswith("present_"):
                self._extra_outputs.append(o.name)
        if logits is None:
            raise EdgecError("the ONNX model has no 'logits' output")
        self._vocab = logits.shape[-1] if isinstance(logits.shape[-1], int) else None
        self._logits_dtype = _NP[logits.type]
        # the decode step: one token, everything bound once
        self._ids = np.zeros((1, 1), np.int64)
        self._pos = np.zeros((1, 1), np.int64)
        self._rows_input = LOGITS_ROWS in executor.input_names
        self._one = np.ones(1, np.int64)  # logits_rows = 1
        self._step = self._binding(self._ids, self._pos, self._one)
        self._step_logits = self._bind_logits(self._step, 1)

    def _binding(self, ids: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> ort.IOBinding:
        b = self.session.io_binding()
        b.bind_cpu_input("input_ids", ids)
        b.bind_cpu_input("position_ids", pos)
        if self._rows_input:
            b.bind_cpu_input(LOGITS_ROWS, rows)
        for name, ov in self._kv.items():
            b.bind_ortvalue_input(name, ov)
            b.bind_ortvalue_output(name.replace("past_", "present_", 1), ov)
        for name in self._extra_outputs:
            b.bind_output(name)
        return b

    def _bind_logits(self, b: ort.IOBinding, n: int) -> np.ndarray | None:
        if self._vocab is None:
            b.bind_output("logits")
            return None
        out = np.empty((1, n, self._vocab), self._logits_dtype)
        b.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(out))
        return out

    def _run(self, b: ort.IOBinding, out: np.ndarray | None) -> np.ndarray:
        self.session.run_with_iobinding(b)
        if out is None:  # logits is bound last
            out = b.get_outputs()[-1].numpy()
        return out[0]

    def run(self, ids, last_only: bool = False) -> np.ndarray:
        """Feed ids at positions length..; returns logits [len(ids), vocab] ([1, vocab] with last_only).

        last_only skips the logits projection of all rows but the last (a prompt's
        prefill needs only the next token's). For one token the result is a view
        of a reused buffer, valid until the next call.
        """
        n = len(ids)
        if n == 0 or self.length + n > self.capacity:
            raise EdgecError(f"{n} more tokens do not fit the KV cache ({self.length} of {self.capacity} used)")
        if n == 1:
            self._ids[0, 0] = ids[0]
            self._pos[0, 0] = self.length
            logits = self._run(self._step, self._step_logits)
        else:
            rows = 1 if last_only and self._rows_input else n
            b = self._binding(np.asarray([ids], np.int64),
                              np.arange(self.length, self.length + n, dtype=np.int64)[None],
                              np.array([rows], np.int64))
            logits = self._run(b, self._bind_logits(b, rows))
        self.length += n
        return logits
