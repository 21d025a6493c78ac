"""Fuzzes fastgrad.load (and unpickling) with atheris: hostile saved Functions.

    pip install atheris==3.0.0
    python tools/fuzz_load.py -max_total_time=60          # a bounded run
    python tools/fuzz_load.py -runs=100000 corpus_dir/    # libFuzzer flags as usual
    python tools/fuzz_load.py --write-seeds corpus_dir/   # the seed corpus only
    python tools/fuzz_load.py crash-<sha1>                # replay one input

The promise (docs/design.md section 4): whatever the bytes, ``fastgrad.load``
raises ValueError (OSError for the file itself; MemoryError when a hostile
header asks for more memory than there is) or returns a Function that is
safe to run -- never a crash, never an out-of-bounds read.  Anything else
(a segfault, an ASan report, another exception type) is a finding: libFuzzer
stops and writes the input to crash-<sha1>.

Each input is read three ways, chosen by its first byte:
- raw: the bytes are the file (a seed corpus of real saved Functions is
  written at start-up, so mutations start from valid archives);
- structured: a valid Function's arrays (the plain arrays of the .npz) with
  fuzzer-chosen edits -- an entry set to a boundary value, an array cut or
  grown, a wrong dtype or rank, a key dropped -- then saved and loaded, or
  unpickled.  This reaches the validator (fg_tape_validate) with near-valid
  tapes, where raw bytes rarely get past the zip checksums.
- archive members: a valid Function's members written into a zip by hand,
  with unknown members added (any name, a duplicate, a deflate stream
  expanding to 256 MiB, junk that is not deflate at all) and known members
  replaced by such a bomb, deflated, given a declared size, compressed size,
  header offset or CRC that lies, or an .npy header promising more data than
  there is.  load must never read an unknown member and must bound what a
  known one may expand to: the process's peak RSS is checked after every
  such load.
- Value pickles (first byte 5 mod 8): pickled Values (every op row, n-ary
  nodes, a user op, a subclass, attributes referring back, several Values
  sharing nodes) taken apart into their flat records and references
  (fastgrad/_pickle.pxi), edited (record bytes, lengths, chain order, dump
  indices, types, node states), pickled again and loaded.  A load must
  raise ValueError (or MemoryError) or give Values that work: data, _prev,
  backward, grad, deepcopy and a second round trip; and every node it made
  is freed once those Values are dropped.
A Function that loads is then run through every entry point (call,
value_and_grad, jvp, vjp, jacobian, hvp, batch, batch_value_and_grad), so a
hole in validation shows as an out-of-bounds read -- caught for certain when
the extension is built with ASan (tools/sanitize.sh runs this fuzzer on its
instrumented build when FUZZ_SECONDS is set).
"""

from __future__ import annotations

import copy
import functools
import gc
import io
import os
import pickle
import resource
import struct
import sys
import tempfile
import zipfile
import zlib

import atheris

# The checkout (or the scratch copy tools/sanitize.sh built) this file is in.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import fastgrad
import numpy as np
import ops  # tests/ops.py: one way to make every registry row
from fastgrad._core import _function_from_state

KEYS = ["version", "sizes", "single", "op", "a", "b", "cst", "opnd", "ocst", "out"]
DTYPES = [np.int64, np.int32, np.uint8, np.bool_, np.float64, np.int16, np.uint32, np.float32]
SPECIAL = [0, 1, 2, -1, -2, 3, 7, 255, 256, 2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**62, 2**63 - 1, -(2**63)]
TMP = tempfile.mkdtemp(prefix="fastgrad-fuzz-load.")
PATH = os.path.join(TMP, "f.npz")


def _examples() -> list:
    """A few small Functions covering every op kind, n-ary nodes and several outputs."""
    def mlp(p, x):
        h = [fastgrad.dot(p[0:2], x, p[2]).tanh(), fastgrad.dot(p[3:5], x, p[5]).relu()]
        return fastgrad.dot(p[6:8], h, p[8]).sigmoid()

    def every_op(x):
        a, b = x[0], x[1]
        return [ops.make_row(row, fastgrad, a, b) for row in ops.ROWS.values() if row is not None]

    return [
        fastgrad.compile(mlp, np.linspace(-1, 1, 9), [0.5, -0.25]),
        fastgrad.compile(every_op, [0.7, 1.3]),
        fastgrad.compile(lambda x, y: x[0] * y[0] + y[1], [1.0], [2.0, 3.0]),
        fastgrad.compile(lambda x: x[0], [1.0]),
    ]


EXAMPLES = [f._state() for f in _examples()]


def _write_seeds(corpus: str) -> None:
    for k, f in enumerate(_examples()):
        buf = io.BytesIO()
        np.savez(buf, **f._state())
        with open(os.path.join(corpus, f"seed{k}.npz"), "wb") as fh:
            fh.write(b"\x00" + buf.getvalue())      # first byte 0: the raw reading
    # A saved Function whose central directory inflates a member's compressed
    # size past the end of the file (load must refuse it by name).
    buf = io.BytesIO()
    np.savez(buf, **EXAMPLES[2])
    raw = bytearray(buf.getvalue())
    cd = raw.find(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 20, 10**9)
    with open(os.path.join(corpus, "seed-compress-size.npz"), "wb") as fh:
        fh.write(b"\x00" + bytes(raw))
    for k in range(len(VALUE_SEEDS)):
        with open(os.path.join(corpus, f"value{k}"), "wb") as fh:
            fh.write(bytes([5, k]) + b"\x00" * 8)   # first byte 5: the Value reading, unedited


# ---------------------------------------------------------------- Value pickles

class Tagged(fastgrad.Value):
    """A Value subclass, pickled by reference to this module."""


def _pair_backward(a, b, out) -> None:
    a.grad += b.data * out.grad
    b.grad += a.data * out.grad


def _value_structures() -> list:
    """Lists of Values pickled together (in the graph current at import)."""
    Value = fastgrad.Value
    a, b = Value(0.7, label="a"), Value(1.3)
    rows = [ops.make_row(row, fastgrad, a, b) for row in ops.ROWS.values() if row is not None]
    s = fastgrad.sum([a, 2.0, b, a])
    d = fastgrad.dot([a, b], [b, 1.0], 0.5)
    u = Value(a.data * b.data, (a, b), "pair")
    u._backward = functools.partial(_pair_backward, a, b, u)
    t = Tagged(3.0)
    t.colour = "red"
    m = t * u + d
    m.label = "m"
    m.me = m
    m.more = [s]
    return [[a], [rows[-1], a], rows, [s, d, u, m], [m, t, a], [s * s]]


class _Forged:
    """Pickles as the given reduce value (a record or a Value reference)."""

    def __init__(self, rv: tuple) -> None:
        self.rv = rv

    def __reduce__(self):
        return self.rv


def _take_apart(values: list) -> tuple:
    """([record fields], [Value fields]) of values pickled as one dump: a
    record is [prev record or None, base, n, m, byte order, data], a Value
    [record, dump index, type, state entries or None]; a Value inside an
    attribute dict becomes ("V", its position)."""
    records: list = []
    refs: list = []
    keep = []                                  # the records stay alive: one dump
    pos = {id(v): j for j, v in enumerate(values)}
    for v in values:
        rv = v.__reduce__()
        rec, k, tp = rv[1]
        keep.append(rec)
        if all(rec is not r for r in keep[:-1]):
            load, (prev, base, n, m, order, data) = rec.__reduce__()
            records.append([rec, prev, base, n, m, order, data])
        entries = None
        if len(rv) > 2:
            entries = []
            for (kk, etp, name, uop, bw, dd) in rv[2][1]:
                if bw is not None:
                    bw = bw.__reduce__()[1][0]
                if dd is not None:
                    dd = {key: (("V", pos[id(x)]) if id(x) in pos else x) for key, x in dd.items()
                          if not isinstance(x, fastgrad.Value) or id(x) in pos}
                entries.append([kk, etp, name, uop, bw, dd])
        refs.append([rec, k, tp, entries])
    index = {id(r[0]): j for j, r in enumerate(records)}
    out_records = [[None if r[1] is None else index[id(r[1])]] + r[2:] for r in records]
    out_refs = [[index[id(r[0])]] + r[1:] for r in refs]
    del keep
    return out_records, out_refs


with fastgrad.Graph():
    VALUE_SEEDS = [_take_apart(vs) for vs in _value_structures()]
TYPES = [fastgrad.Value, Tagged, int, None, fastgrad.Graph]


def _edit_value_pickle(fdp: atheris.FuzzedDataProvider, records: list, refs: list) -> None:
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        what = fdp.ConsumeIntInRange(0, 9)
        r = records[fdp.ConsumeIntInRange(0, len(records) - 1)]
        v = refs[fdp.ConsumeIntInRange(0, len(refs) - 1)]
        if what <= 2 and r[5]:                       # record bytes: one byte, or an int32
            data = bytearray(r[5])
            i = fdp.ConsumeIntInRange(0, len(data) - 1)
            if what == 0:
                data[i] = fdp.ConsumeIntInRange(0, 255)
            else:
                x = fdp.PickValueInList(SPECIAL + [fdp.ConsumeIntInRange(-3, 40)])
                data[i:i + 4] = (x & 0xFFFFFFFF).to_bytes(4, sys.byteorder)
            r[5] = bytes(data[:len(r[5])])
        elif what == 3:                              # cut or grow the record
            r[5] = r[5][:fdp.ConsumeIntInRange(0, len(r[5]))] + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        elif what == 4:                              # lengths and chain position
            j = fdp.ConsumeIntInRange(1, 3)
            near = [r[j] + 1, r[j] - 1] if type(r[j]) is int else []
            r[j] = fdp.PickValueInList(SPECIAL + near + [0, "1", 1.0])
        elif what == 5:
            r[0] = fdp.PickValueInList([None, 0, len(records) - 1, r[0]])
        elif what == 6:                              # a reference
            near = [v[1] + 1] if type(v[1]) is int else []
            v[1] = fdp.PickValueInList(SPECIAL + near + [-1, 0, "0"])
        elif what == 7:
            v[2] = fdp.PickValueInList(TYPES)
        elif what == 8 and v[3]:                     # a node state
            e = v[3][fdp.ConsumeIntInRange(0, len(v[3]) - 1)]
            f = fdp.ConsumeIntInRange(0, 5)
            e[f] = fdp.PickValueInList([None, 0, -1, 10**6, "x", len, {}, {"k": 1}, Tagged,
                                        fastgrad.Value, _pair_backward, [1]])
        elif what == 9:
            r[4] = fdp.PickValueInList(["little", "big", None])


def _forge(records: list, refs: list) -> list:
    forged: list = []
    for prev, base, n, m, order, data in records:
        p = forged[prev] if isinstance(prev, int) and 0 <= prev < len(forged) else None
        forged.append(_Forged((fastgrad._core._load_flat, (p, base, n, m, order, data))))
    vals: list = []
    for ri, k, tp, entries in refs:
        rec = forged[ri] if isinstance(ri, int) and 0 <= ri < len(forged) else None
        vals.append(_Forged((fastgrad._core._value_from_flat, (rec, k, tp))))
    for (ri, k, tp, entries), fv in zip(refs, vals):
        if entries is not None:
            rec = forged[ri] if isinstance(ri, int) and 0 <= ri < len(forged) else None
            states = []
            for e in entries:
                e = list(e)
                if isinstance(e[5], dict):
                    e[5] = {key: (vals[x[1]] if isinstance(x, tuple) and x[:1] == ("V",) else x)
                            for key, x in e[5].items()}
                states.append(tuple(e))
            fv.rv = fv.rv + ((rec, tuple(states)),)
    return vals


def _exercise_values(values: list) -> None:
    for v in values:
        v.data, v.grad, v.label, v._op, repr(v)  # noqa: B018
        seen, stack = set(), [v]
        while stack and len(seen) < 200:
            x = stack.pop()
            if x not in seen:
                seen.add(x)
                stack.extend(x._prev)
        v.backward()
        fastgrad.grad(v, list(seen))
        copy.deepcopy(v)
        pickle.loads(pickle.dumps([v, *seen]))


def _value_pickle(fdp: atheris.FuzzedDataProvider) -> None:
    records, refs = copy.deepcopy(VALUE_SEEDS[fdp.ConsumeIntInRange(0, len(VALUE_SEEDS) - 1)])
    _edit_value_pickle(fdp, records, refs)
    with fastgrad.Graph() as g:
        blob = pickle.dumps(_forge(records, refs))
        try:
            values = pickle.loads(blob)
        except (ValueError, MemoryError) as exc:
            _outcome(str(exc))
            values = []
        try:
            _exercise_values(values)
        except (ValueError, TypeError, FloatingPointError, RuntimeError) as exc:
            _outcome(str(exc))
        del values
    # Attributes and a user op's _backward that refer back (m.me = m): a
    # cycle whose node is used by a consumer is collected once the consumer
    # is gone, one layer per collection.
    live, before = g.stats()["live_nodes"], -1
    while live and live != before:
        gc.collect()
        live, before = g.stats()["live_nodes"], live
    assert live == 0, f"{live} nodes of a loaded Value pickle still live after its Values were dropped"


def _edit(fdp: atheris.FuzzedDataProvider, state: dict) -> dict:
    state = {k: v.copy() for k, v in state.items()}
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        key = fdp.PickValueInList(KEYS)
        arr = state.get(key)
        kind = fdp.ConsumeIntInRange(0, 9)
        if arr is None:
            state[key] = np.zeros(fdp.ConsumeIntInRange(0, 4), dtype=fdp.PickValueInList(DTYPES))
        elif kind <= 4 and arr.size:                 # one entry
            i = fdp.ConsumeIntInRange(0, arr.size - 1)
            if arr.dtype.kind == "f":
                v: object = fdp.PickValueInList([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e308,
                                                 fdp.ConsumeRegularFloat()])
            elif arr.dtype.kind == "b":
                v = fdp.ConsumeBool()
            else:
                v = fdp.PickValueInList(SPECIAL + [arr.size, arr.size - 1, i, i + 1,
                                                   fdp.ConsumeIntInRange(-40, 40)])
                info = np.iinfo(arr.dtype)
                v = int(v) % (int(info.max) - int(info.min) + 1) + int(info.min) \
                    if not int(info.min) <= int(v) <= int(info.max) else v
            arr.reshape(-1)[i] = v
        elif kind == 5:                              # cut or grow
            n = fdp.ConsumeIntInRange(0, arr.size + 3)
            state[key] = np.resize(arr, n) if n else arr[:0]
        elif kind == 6:                              # another dtype
            state[key] = arr.astype(fdp.PickValueInList(DTYPES))
        elif kind == 7:                              # another rank
            state[key] = arr.reshape(1, -1) if arr.ndim == 1 else arr.reshape(-1)
        elif kind == 8:
            del state[key]
        else:                                        # swap two entries
            if arr.size > 1:
                flat = arr.reshape(-1)
                i, j = fdp.ConsumeIntInRange(0, arr.size - 1), fdp.ConsumeIntInRange(0, arr.size - 1)
                flat[i], flat[j] = flat[j], flat[i]
    return state


def _exercise(f, fdp: atheris.FuzzedDataProvider) -> None:
    """Every entry point of a Function that loaded; only ValueError/TypeError
    (a multi-output function asked for a gradient, ...) may come out."""
    sizes = f.arg_sizes
    if sum(sizes) > 10_000 or f.n_nodes > 100_000:
        return
    args = [np.array(fdp.ConsumeFloatList(s) + [0.5] * s)[:s] for s in sizes]
    calls = [
        lambda: f(*args),
        lambda: f.value_and_grad(*args),
        lambda: f.jvp(args, args),
        lambda: f.vjp(args, 1.0 if f.n_outputs == 1 else np.ones(f.n_outputs)),
        lambda: f.jacobian(*args),
        lambda: f.hvp(args, args[0] if args else np.zeros(0)),
        lambda: f.batch(*[np.stack([a, a + 1.0]) for a in args], batch_argnums=tuple(range(len(args)))),
        lambda: f.batch_value_and_grad(*[np.stack([a, a]) for a in args],
                                       batch_argnums=tuple(range(len(args))), threads=2),
    ]
    for call in calls:
        try:
            call()
        except (ValueError, TypeError):
            pass


def _outcome(msg: str) -> None:
    """Coverage feedback from inside the compiled loader: the reason a state
    was refused becomes a Python branch, so libFuzzer keeps an input that
    reaches a new check (the C validator itself is not instrumented)."""
    for key in ("not a saved", "missing array", "must be 1-D", "format version", "negative",
                "entries for", "operands", "output count", "impossible sizes", "corrupt tape",
                "Bad", "zip", "CRC", "pickle", "header", "EOF", "shape", "dtype", "descr",
                "expands to", "promises", "unsupported .npy", "compression", "Truncated",
                "compressed bytes but", "past the end", "stored uncompressed", "no local file header",
                "is corrupt", "starts at node", "a record of", "endian", "malformed", "refers to",
                "type ", "state ", "a node state", "name ", "attributes ", "a _backward for",
                "node ", "follows a"):
        if key in msg:
            return


# ---------------------------------------------------------------- archive members

BOMB_SIZE = 256 << 20
# What the process may reach: a load that decompressed even a few bombs passes it.
RSS_LIMIT_MB = 900
_bomb = None


def _bomb_member() -> tuple:
    """(raw deflate stream, crc32, size) of BOMB_SIZE zero bytes (~256 kB), made once."""
    global _bomb
    if _bomb is None:
        chunk = bytes(1 << 20)
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        parts, crc = [], 0
        for _ in range(BOMB_SIZE >> 20):
            parts.append(comp.compress(chunk))
            crc = zlib.crc32(chunk, crc)
        parts.append(comp.flush())
        _bomb = (b"".join(parts), crc, BOMB_SIZE)
    return _bomb


def _zip_bytes(members: list) -> bytes:
    """A zip archive written by hand: [(name, method, data, crc, declared size,
    declared compressed size or None, header offset shift)], so declared sizes,
    CRCs and offsets can lie and streams can be given pre-compressed."""
    out, central = bytearray(), bytearray()
    for name, method, data, crc, size, csize, shift in members:
        off = len(out)
        csize = len(data) if csize is None else csize
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21,
                           crc & 0xFFFFFFFF, csize & 0xFFFFFFFF, size & 0xFFFFFFFF, len(name), 0) + name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21,
                               crc & 0xFFFFFFFF, csize & 0xFFFFFFFF, size & 0xFFFFFFFF, len(name), 0, 0, 0, 0, 0,
                               (off + shift) & 0xFFFFFFFF) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + end)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _archive_members(fdp: atheris.FuzzedDataProvider) -> bytes:
    state = EXAMPLES[fdp.ConsumeIntInRange(0, len(EXAMPLES) - 1)]
    if fdp.ConsumeBool():
        state = _edit(fdp, state)
    members = []
    for key, arr in state.items():
        data = _npy(arr)
        members.append([(key + ".npy").encode(), 0, data, zlib.crc32(data), len(data), None, 0])
    for _ in range(fdp.ConsumeIntInRange(0, 4)):          # known members made hostile
        m = members[fdp.ConsumeIntInRange(0, len(members) - 1)]
        how = fdp.ConsumeIntInRange(0, 8)
        if how == 0:
            _, m[2], m[3], m[4] = (None,) + _bomb_member()
            m[1] = 8
        elif how == 1:                                     # honestly deflated
            comp = zlib.compressobj(6, zlib.DEFLATED, -15)
            m[1], m[2] = 8, comp.compress(m[2]) + comp.flush()
        elif how == 2:                                     # declared size lies
            m[4] = fdp.PickValueInList([0, 1, m[4] - 1, m[4] + 1, 2 * m[4], 2**31, 2**32 - 1])
        elif how == 3:                                     # CRC lies
            m[3] ^= 1 << fdp.ConsumeIntInRange(0, 31)
        elif how == 4:                                     # a header that promises more data
            head = io.BytesIO()
            shape = (fdp.PickValueInList([2**20, 2**31, 2**40, 2**62]),)
            np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False,
                                                        "shape": shape})
            m[2] = head.getvalue() + m[2][128:]
            m[3], m[4] = zlib.crc32(m[2]), len(m[2])
        elif how == 5:                                     # not deflate at all
            m[1], m[2] = 8, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        elif how == 6:                                     # declared compressed size lies
            # (past the end of the file, or just enough that 64 x it admits
            # a declared size and a header promising far more than there is)
            m[5] = fdp.PickValueInList([0, 1, len(m[2]) - 1, len(m[2]) + 1, len(m[2]) + 4096,
                                        m[4] // 64 + 1, 2**31, 2**32 - 1])
            if fdp.ConsumeBool():
                m[4] = fdp.PickValueInList([2**28, 2**32 - 1])
        elif how == 7:                                     # header offset lies
            m[6] = fdp.PickValueInList([1, -1, 30, 4096, 2**31, -len(m[2])])
        else:
            members.remove(m)
    names = [b"junk.npy", b"op.npy", b"version.npy", b"x", b"../../evil.npy", b"a" * 300, b"", b"sizes"]
    for _ in range(fdp.ConsumeIntInRange(0, 4)):          # unknown (or duplicated) members
        name = fdp.PickValueInList(names)
        kind = fdp.ConsumeIntInRange(0, 2)
        if kind == 0:
            data, crc, size = _bomb_member()
            members.insert(fdp.ConsumeIntInRange(0, len(members)), [name, 8, data, crc, size, None, 0])
        elif kind == 1:
            data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
            members.insert(fdp.ConsumeIntInRange(0, len(members)), [name, 8, data, 0, 2**31, None, 0])
        else:
            data = _npy(np.zeros(fdp.ConsumeIntInRange(0, 64)))
            members.append([name, 0, data, zlib.crc32(data), len(data), None, 0])
    return _zip_bytes([tuple(m) for m in members])


def _check_rss() -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    assert peak < RSS_LIMIT_MB, f"loading reached {peak} MB: an archive member was read unbounded"


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    if data[0] % 8 == 5:                 # Value pickles
        _value_pickle(atheris.FuzzedDataProvider(data[1:]))
        return
    if data[0] % 4 == 3:                 # archive members
        fdp = atheris.FuzzedDataProvider(data[1:])
        with open(PATH, "wb") as fh:
            fh.write(_archive_members(fdp))
        try:
            f = fastgrad.load(PATH)
        except (ValueError, OSError, MemoryError) as exc:
            _check_rss()
            _outcome(str(exc))
            return
        _check_rss()
        _exercise(f, fdp)
        return
    if data[0] % 2 == 0:                 # raw bytes are the file
        with open(PATH, "wb") as fh:
            fh.write(data[1:])
        try:
            f = fastgrad.load(PATH)
        except (ValueError, OSError, MemoryError) as exc:
            _outcome(str(exc))
            return
        _exercise(f, atheris.FuzzedDataProvider(data[1:64]))
        return
    fdp = atheris.FuzzedDataProvider(data[1:])
    state = _edit(fdp, EXAMPLES[fdp.ConsumeIntInRange(0, len(EXAMPLES) - 1)])
    how = fdp.ConsumeIntInRange(0, 2)
    try:
        if how == 0:
            with open(PATH, "wb") as fh:
                np.savez(fh, **state)
            f = fastgrad.load(PATH)
        elif how == 1:
            f = pickle.loads(pickle.dumps(_function_from_state_reducer(state)))
        else:
            f = _function_from_state(state)
    except (ValueError, MemoryError) as exc:
        _outcome(str(exc))
        return
    _exercise(f, fdp)


class _function_from_state_reducer:
    """Pickles as fastgrad's own Function reduction, with hostile arrays."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def __reduce__(self):
        return (_function_from_state, (self.state,))


def _replaying(argv: list) -> bool:
    """-runs=0 over a corpus, or single input files: no coverage needed."""
    return "-runs=0" in argv or any(os.path.isfile(a) for a in argv[1:] if not a.startswith("-"))


def main() -> None:
    argv = list(sys.argv)
    if argv[1:2] == ["--write-seeds"]:            # fill a corpus directory and stop
        _write_seeds(argv[2])
        return
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = tempfile.mkdtemp(prefix="fastgrad-fuzz-load-corpus.")
        _write_seeds(corpus)
        argv.append(corpus)
    # Python-level coverage: this harness, numpy's .npy/.npz readers, zipfile
    # (about 15 s at start-up; not needed to replay inputs).
    if not _replaying(argv):
        atheris.instrument_all()
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
