"""Run a compiled ONNX artifact with onnxruntime.

Two ways in: `OnnxExecutor.run(feeds)` is a plain session.run with the IR's
inputs (a cache of exactly `past` rows in, `past+seq` rows out: tests, eval);
`OnnxExecutor.sequence(capacity)` is the generation loop's fast path when the
model's attention is GroupQueryAttention (see lower_gqa.py): the KV cache is
allocated once and bound with IOBinding as both past and present, so a
decode step copies no cache and allocates nothing on the Python side.
"""
from __future__ import annotations

import json
import mmap
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgec.artifact import as_files
from edgec.errors import ArtifactError
from edgec.executor import ForwardSequence, check_capacity, check_fits
from edgec.interface import ModelInterface, TensorSpec
from edgec.memory import HugePages

from .compile import CONTEXT_KEY, DATA_FILE, MODEL_FILE
from .lower_gqa import KV_LAYOUT_KEY, SHARED_BUFFER

_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
           "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
           "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
       "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(double)": np.float64}


def session_options(options: dict | None = None, threads: int | None = None) -> ort.SessionOptions:
    """SessionOptions from the backend's options (the [backend.onnx] table); `threads` (e.g. --threads) wins."""
    from .backend import BACKEND

    options = BACKEND.resolve(BACKEND.check_options(options, "[backend.onnx]"))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _LEVELS[options["graph_optimization"]]
    n = threads or options["intra_op_threads"]
    if n:
        opts.intra_op_num_threads = int(n)
    if options["cpu_mem_arena"] is not None:
        opts.enable_cpu_mem_arena = bool(options["cpu_mem_arena"])
    if options["allow_spinning"] is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if options["allow_spinning"] else "0")
    return opts


def _providers(wanted: list[str] | None) -> list[str]:
    """The wanted execution providers this onnxruntime has, in order; the CPU one at least."""
    have = ort.get_available_providers()
    chosen = [p for p in wanted or [] if p in have]
    return chosen or ["CPUExecutionProvider"]


def _interface(session: ort.InferenceSession) -> ModelInterface:
    """The interface as compiled (for a model folder opened without a manifest)."""
    def specs(values):
        return [TensorSpec(v.name, np.dtype(_NP[v.type]).name,
                           tuple(d if isinstance(d, int) else str(d) for d in v.shape)) for v in values]

    return ModelInterface.from_signature(specs(session.get_inputs()), specs(session.get_outputs()))


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
    after (files.is_current). If a rebuild swapped the folder meanwhile (onnxruntime may then also
    fail on the vanished file), the verified file is handed over from memory instead, at the cost
    of one more copy of the weights at load.
    """
    if not data_size:
        return ort.InferenceSession(model_bytes, sess_options=make_opts(), providers=providers)
    if files.is_current(DATA_FILE):
        by_name = make_opts()
        by_name.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(files.folder()))
        try:
            session = ort.InferenceSession(model_bytes, sess_options=by_name, providers=providers)
        except Exception:  # noqa: BLE001 - onnxruntime's errors share no base; re-raised unless swapped
            if files.is_current(DATA_FILE):
                raise
            session = None  # the file was replaced while onnxruntime read it (e.g. "(deleted)")
        if session is not None and files.is_current(DATA_FILE):
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
    `options` are the backend's run options (targets/onnx/backend.py).
    """

    def __init__(self, model_dir, *, threads: int | None = None, options: dict | None = None,
                 interface: ModelInterface | None = None, profile_prefix: str | None = None):
        """model_dir: a folder, or an artifact's verified model/ files (edgec.artifact.VerifiedFiles);
        interface: the manifest's (default: read from the compiled model)."""
        files = as_files(model_dir)
        self.threads = threads
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
        providers = _providers((options or {}).get("providers"))
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
        self.interface = interface or _interface(self.session)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, tokens = self.interface.logits_rows, self.interface.tokens
        if rows and rows not in feeds and tokens in feeds:  # default: logits of every row
            feeds = {**feeds, rows: np.array([np.shape(feeds[tokens])[1]], np.int64)}
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"missing model input(s) {missing}")
        outs = self.session.run(self.output_names, {n: feeds[n] for n in self.input_names})
        return dict(zip(self.output_names, outs))

    def op_trace(self) -> list[tuple[float, dict[str, list[float]]]]:
        """Ends onnxruntime's profiler (opened with profile_prefix); per run, in order:
        (wall microseconds, "op type@node name" -> [calls, kernel microseconds]); a node's name starts
        with the IR node it was lowered from (lower_context.py), so time can be split per layer."""
        events = json.loads(Path(self.session.end_profiling()).read_text())
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
        out = [(float(b - a), defaultdict(lambda: [0, 0.0])) for a, b in runs]
        starts = np.array([r[0] for r in runs])
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
            if i < 0 or e["ts"] > runs[i][1]:
                continue
            node = e["name"][:-len("_kernel_time")]
            acc = out[i][1][f'{e.get("args", {}).get("op_name", "?")}@{node}']
            acc[0] += 1
            acc[1] += float(e["dur"])
        return out

    def sequence(self, capacity: int):
        """A KV cache of `capacity` tokens, bound in place where the model can share buffers."""
        return OnnxSequence(self, capacity) if self.shared_kv else ForwardSequence(self, capacity)


class OnnxSequence:
    """One sequence: its KV buffers, allocated once, bound as both past_X and present_X.

    GroupQueryAttention writes each call's new rows at row `length` of the
    buffers in place. One-token steps reuse a binding whose input ids,
    position and logits arrays are preallocated, so a decode step does no
    Python-side work that depends on the context length.
    """

    def __init__(self, executor: OnnxExecutor, capacity: int):
        self.session = executor.session
        self.capacity = check_capacity(capacity)
        self.length = 0
        iface = self.iface = executor.interface
        self._present = iface.present_of()
        self.buffers: dict[str, np.ndarray] = {}  # past name -> [1, kv_heads, capacity, head_dim]
        self._kv: dict[str, ort.OrtValue] = {}
        for name, (dtype, shape) in iface.cache_shapes(self.capacity).items():
            # zeros: calloc'ed pages cost nothing until GQA writes them
            self.buffers[name] = np.zeros(shape, dtype)
            self._kv[name] = ort.OrtValue.ortvalue_from_numpy(self.buffers[name])
        unfed = [n for n in executor.input_names if n not in self._kv
                 and n not in (iface.tokens, iface.positions, iface.logits_rows)]
        if unfed:
            raise ArtifactError(f"ONNX model input {unfed[0]!r} is not one the generation loop feeds")
        self._extra_outputs = [n for n in executor.output_names
                               if n != iface.logits and n not in self._present.values()]
        logits = next((o for o in self.session.get_outputs() if o.name == iface.logits), None)
        if logits is None:
            raise ArtifactError(f"the ONNX model has no {iface.logits!r} output")
        self._vocab = logits.shape[-1] if isinstance(logits.shape[-1], int) else None
        self._logits_dtype = _NP[logits.type]
        # the decode step: one token, everything bound once
        self._ids = np.zeros((1, 1), np.int64)
        self._pos = np.zeros((1, 1), np.int64)
        self._rows_input = iface.logits_rows
        self._one = np.ones(1, np.int64)  # logits_rows = 1
        self._step = self._binding(self._ids, self._pos, self._one)
        self._step_logits = self._bind_logits(self._step, 1)

    def reset(self) -> None:
        """Start a new sequence in the same buffers (GroupQueryAttention reads only rows < length)."""
        self.length = 0

    def _binding(self, ids: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> ort.IOBinding:
        b = self.session.io_binding()
        b.bind_cpu_input(self.iface.tokens, ids)
        b.bind_cpu_input(self.iface.positions, pos)
        if self._rows_input:
            b.bind_cpu_input(self._rows_input, rows)
        for name, ov in self._kv.items():
            b.bind_ortvalue_input(name, ov)
            b.bind_ortvalue_output(self._present[name], ov)
        for name in self._extra_outputs:
            b.bind_output(name)
        return b

    def _bind_logits(self, b: ort.IOBinding, n: int) -> np.ndarray | None:
        if self._vocab is None:
            b.bind_output(self.iface.logits)
            return None
        out = np.empty((1, n, self._vocab), self._logits_dtype)
        b.bind_ortvalue_output(self.iface.logits, ort.OrtValue.ortvalue_from_numpy(out))
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
        check_fits(self, n)
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
