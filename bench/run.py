"""fastgrad's comparison harness: `python bench/run.py [--quick] [--engines a,b] [--json PATH]`.

Measures every workload of workloads.py on every installed engine of engines.py,
interleaving repetitions engine by engine, and prints a Markdown table of medians
(min, max) and ratios against fastgrad; writes everything to JSON.  Timing is
only ever reported here, never asserted in tests.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)  # an in-place build of fastgrad in the checkout
# numpy's OpenBLAS starts spinning worker threads at import; nothing here uses
# BLAS, and on a small machine they steal cycles from the engine being timed.
# Set before workloads.py imports numpy; memory children inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import engines as engines_mod  # noqa: E402
import workloads as wl_mod  # noqa: E402
from workloads import Case, Unsupported, _Inferred  # noqa: E402

TARGETS = {
    "seed_us": 2.0,              # seed example fwd+bwd <= 2 us
    "mlp_speedup": 60.0,         # micrograd / fastgrad >= 60x on the demo step
    "floor_ratio": 2.5,          # fastgrad backward / C floor <= 2.5x
    "bytes_per_node": 56.0,      # node arrays <= 56 bytes per live node (docs/design.md section 2: identity)
    "replay_floor_ratio": 1.2,   # compiled step / C loop over the same tape <= 1.2x
    "create_graph_forward": 3.0,  # grad(create_graph=True) / forward build of the same loss <= 3x
    "create_graph_torch": 50.0,   # torch.autograd.grad(create_graph=True) / fastgrad's >= 50x
}
# mlp_compiled: (fastgrad row, peer) pairs where fastgrad must be faster (ratio < 1).
FASTER_THAN = [("fastgrad", "casadi", "compiled replay vs CasADi SX Function"),
               ("fastgrad", "torch", "compiled replay vs PyTorch tensors"),
               ("fastgrad-batched", "jax", "batched replay vs JAX jit")]


# Each repetition is preceded by one untimed call, unless one call takes longer
# than this (seconds): a cache-cold first call is not what a loop sees.
WARMUP_LIMIT = 0.5


@dataclasses.dataclass
class Config:
    quick: bool
    reps: int                   # repetitions per case (at most)
    min_reps: int               # repetitions every case gets, budget or not
    rep_target: float           # seconds one repetition aims at (calls are batched)
    budget: float               # seconds per case after which a slow engine stops repeating
    random_n: int
    chain_depths: list
    memory_n: int


def make_config(args) -> Config:
    if args.quick:
        cfg = Config(quick=True, reps=5, min_reps=3, rep_target=0.01, budget=2.0,
                     random_n=100_000, chain_depths=[100, 1000, 100_000], memory_n=100_000)
    else:
        cfg = Config(quick=False, reps=15, min_reps=3, rep_target=0.1, budget=10.0,
                     random_n=1_000_000, chain_depths=[100, 1000, 100_000, 1_000_000],
                     memory_n=100_000)
    if args.reps:
        cfg.reps = args.reps
        cfg.min_reps = min(cfg.min_reps, args.reps)
    if args.random_n:
        cfg.random_n = args.random_n
    return cfg


# ----------------------------------------------------------------------------
# measuring

def failure(exc: BaseException) -> str:
    if isinstance(exc, _Inferred):
        return str(exc)
    msg = str(exc).splitlines()[0] if str(exc) else ""
    if len(msg) > 160:
        msg = msg[:157] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def timed(fn, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - t0


def measure(workload, variant, loaded, cfg, ctx, log):
    """Prepare every engine's case, check it, calibrate it, then time repetitions
    interleaved engine by engine (starting engine rotated each repetition)."""
    records = {}
    cases = {}

    def record(name, status, reason="", case=None):
        records[name] = {"workload": workload.name, "variant": variant.key, "engine": name,
                         "status": status, "reason": reason,
                         "unit": case.unit if case else None,
                         "info": dict(case.info) if case else {}}

    gc_on = variant.params.get("gc", True)
    gc.disable()  # preparing is untimed, and micrograd builds big graphs far faster so
    try:
        for eng in loaded:
            t_prep = time.perf_counter()
            try:
                cases[eng.name] = eng.prepare(workload, variant, ctx)
            except Unsupported as exc:
                record(eng.name, "skipped", str(exc))
            except _Inferred as exc:
                record(eng.name, "failed", str(exc))
            except Exception as exc:
                record(eng.name, "failed", failure(exc))
            gc.collect()
            log(f"  [{eng.name} prepared in {time.perf_counter() - t_prep:.1f} s]")
        extra = getattr(workload, "extra_cases", None)
        if extra is not None:
            for name, c in extra(cases, {e.name: e for e in loaded}, variant, ctx).items():
                if isinstance(c, Case):
                    cases[name] = c
                    continue
                cases.pop(name, None)  # an engine's case can be failed by a cross-check
                if isinstance(c, Unsupported):
                    record(name, "skipped", str(c))
                else:
                    record(name, "failed", failure(c))
    finally:
        gc.enable()
    # Everything alive now (models, prebuilt graphs) goes to the permanent
    # generation: the untimed gc.collect() before each repetition stays cheap even
    # with a million micrograd nodes alive, and the collector inside a timed call
    # only sees what that call creates.
    gc.collect()
    gc.freeze()

    def timed_gc(fn, n):
        # gc.collect() before every repetition (untimed); the collector then runs
        # during the repetition as in real use, unless the variant turns it off.
        gc.collect()
        if gc_on:
            return timed(fn, n)
        gc.disable()
        try:
            return timed(fn, n)
        finally:
            gc.enable()

    number = {}
    call_time = {}
    check = getattr(workload, "check", None)
    for name in list(cases):
        case = cases[name]
        try:
            gc.collect()
            if not gc_on:
                gc.disable()
            t0 = time.perf_counter()
            result = case.run()
            dt = time.perf_counter() - t0
            gc.enable()
            if check is not None:
                check(case, result)
            del result
            if dt < 0.1:  # a second look: the first call may have paid page faults
                t0 = time.perf_counter()
                case.run()
                dt = min(dt, time.perf_counter() - t0)
        except Exception as exc:
            gc.enable()
            record(name, "failed", failure(exc), case)
            del cases[name]
            gc.collect()
            continue
        number[name] = max(1, int(cfg.rep_target / max(dt, 1e-9)))
        call_time[name] = dt

    log(f"  [checked and calibrated: {', '.join(f'{k} x{v}' for k, v in number.items())}]")
    samples = {name: [] for name in cases}
    spent = {name: 0.0 for name in cases}
    order = list(cases)
    for rep in range(cfg.reps):
        if not order:
            break
        k = rep % len(order)
        for name in order[k:] + order[:k]:
            if rep >= cfg.min_reps and spent[name] > cfg.budget:
                continue
            if call_time[name] < WARMUP_LIMIT:
                cases[name].run()  # untimed: every engine starts its repetition warm
            t = timed_gc(cases[name].run, number[name])
            spent[name] += t
            samples[name].append(t / number[name] / cases[name].units)

    for name, case in cases.items():
        s = samples[name]
        record(name, "ok", "", case)
        records[name].update(median_s=statistics.median(s), min_s=min(s), max_s=max(s),
                             reps=len(s), number=number[name], units_per_call=case.units,
                             samples_s=s)
    cases.clear()
    gc.unfreeze()
    gc.collect()
    ref = records.get("fastgrad", {}).get("median_s")
    for rec in records.values():
        if ref and rec.get("median_s") is not None:
            rec["vs_fastgrad"] = rec["median_s"] / ref
    rank = {e.name: k for k, e in enumerate(loaded)}
    out = sorted(records.values(), key=lambda r: rank.get(r["engine"], len(rank)))
    for rec in out:
        log(f"  {rec['engine']:<10} {summary(rec)}")
    return out


def memory(loaded, cfg, log):
    """One child process per engine and mode, so neither sees the other's heap."""
    out = []
    for eng in loaded:
        rec = {"workload": "memory", "variant": f"chain x=x*w, N={wl_mod.sci(cfg.memory_n)}",
               "engine": eng.name, "unit": "byte/node", "info": {}}
        try:
            for mode in ("rss", "tracemalloc"):
                proc = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--memory-child", eng.name,
                     "--memory-n", str(cfg.memory_n), "--memory-mode", mode],
                    capture_output=True, text=True, timeout=600)
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                                       f"child exited {proc.returncode}")
                rec["info"].update(json.loads(proc.stdout.strip().splitlines()[-1]))
            rec["info"].pop("mode", None)
            rec["status"] = "ok"
            rec["reason"] = ""
        except Exception as exc:
            rec["status"] = "failed"
            rec["reason"] = failure(exc)
        out.append(rec)
    ref = next((r for r in out if r["engine"] == "fastgrad" and r["status"] == "ok"), None)
    for rec in out:
        if rec["status"] == "ok" and ref is not None:
            rec["vs_fastgrad"] = rec["info"]["rss_bytes_per_node"] / max(ref["info"]["rss_bytes_per_node"], 1e-9)
        log(f"  {rec['engine']:<10} " + (json.dumps({k: v for k, v in rec['info'].items() if k != 'stats'})
                                        if rec["status"] == "ok" else rec["reason"]))
    return out


def memory_child(args) -> int:
    eng = next(e for e in engines_mod.ENGINES if e.name == args.memory_child)
    eng.load()
    res = wl_mod.memory_probe(eng, args.memory_n, args.memory_mode)
    print(json.dumps(res))
    return 0


# ----------------------------------------------------------------------------
# reporting

def fmt_time(seconds: float, unit: str) -> str:
    for scale, name in ((1e-9, "ns"), (1e-6, "µs"), (1e-3, "ms"), (1.0, "s")):
        if seconds < scale * 1000 or name == "s":
            v = seconds / scale
            return (f"{v:.3g}" if v < 100 else f"{v:.0f}") + f" {name}/{unit}"
    raise AssertionError


def summary(rec) -> str:
    if rec["status"] != "ok":
        return f"{'fails' if rec['status'] == 'failed' else 'skipped'}: {rec['reason']}"
    return f"{fmt_time(rec['median_s'], rec['unit'])} (min {fmt_time(rec['min_s'], rec['unit'])}, n={rec['reps']})"


def fmt_ratio(r) -> str:
    if r is None:
        return ""
    return f"{r:.3g}x"


def table(results) -> str:
    lines = ["| workload | variant | engine | median | min | max | reps x calls | vs fastgrad |",
             "|---|---|---|---|---|---|---|---|"]
    for rec in results:
        if rec["workload"] == "memory":
            continue
        head = f"| {rec['workload']} | {rec['variant']} | {rec['engine']} "
        if rec["status"] != "ok":
            word = "fails" if rec["status"] == "failed" else "skipped"
            lines.append(head + f"| {word}: {rec['reason']} | | | | |")
            continue
        u = rec["unit"]
        lines.append(head + f"| {fmt_time(rec['median_s'], u)} | {fmt_time(rec['min_s'], u)} | "
                     f"{fmt_time(rec['max_s'], u)} | {rec['reps']} x {rec['number']} | "
                     f"{fmt_ratio(rec.get('vs_fastgrad'))} |")
    mem = [r for r in results if r["workload"] == "memory"]
    if mem:
        lines += ["", "| memory | engine | RSS bytes/node | tracemalloc bytes/node | array bytes/slot | vs fastgrad (RSS) |",
                  "|---|---|---|---|---|---|"]
        for rec in mem:
            if rec["status"] != "ok":
                lines.append(f"| {rec['variant']} | {rec['engine']} | fails: {rec['reason']} | | | |")
                continue
            i = rec["info"]
            slot = i.get("array_bytes_per_slot")
            lines.append(f"| {rec['variant']} | {rec['engine']} | {i['rss_bytes_per_node']:.1f} | "
                         f"{i['tracemalloc_bytes_per_node']:.1f} | {'' if slot is None else f'{slot:.1f}'} | "
                         f"{fmt_ratio(rec.get('vs_fastgrad'))} |")
    return "\n".join(lines)


def modes(results) -> list[str]:
    """How each engine runs each workload, where the adapter said (info["mode"])."""
    seen: dict = {}
    for rec in results:
        mode = (rec.get("info") or {}).get("mode")
        if mode and rec.get("status") == "ok":
            seen.setdefault((rec["workload"], rec["engine"]), mode)
    return [f"- {w} / {e}: {m}" for (w, e), m in seen.items()]


def plot(results, path, title) -> str:
    """Log-scale bars per workload variant (median, min-max whiskers); returns a
    line for the log.  Skipped and failing engines are named under the axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    panels: dict = {}
    for rec in results:
        if rec["workload"] != "batch_scaling":   # one log-log panel of its own, last
            panels.setdefault((rec["workload"], rec["variant"]), []).append(rec)
    scaling = any(rec["workload"] == "batch_scaling" for rec in results)
    if not panels and not scaling:
        return "nothing to plot"
    cols = 3
    rows = (len(panels) + scaling + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, ((workload, variant), recs) in zip(axes.flat, panels.items()):
        names, vals, lo, hi, colors = [], [], [], [], []
        for rec in recs:
            if rec["status"] != "ok":
                names.append(f"{rec['engine']}\n({'fails' if rec['status'] == 'failed' else 'skipped'})")
                vals.append(0.0)
                lo.append(0.0)
                hi.append(0.0)
                colors.append("none")
                continue
            if workload == "memory":
                v, a, b = rec["info"]["rss_bytes_per_node"], None, None
            else:
                v, a, b = rec["median_s"], rec["min_s"], rec["max_s"]
            names.append(rec["engine"])
            vals.append(v)
            lo.append(0.0 if a is None else v - a)
            hi.append(0.0 if b is None else b - v)
            colors.append("tab:orange" if rec["engine"].startswith("fastgrad") else
                          "tab:gray" if rec["engine"] == "c_floor" else "tab:blue")
        x = range(len(names))
        ok = [v > 0 for v in vals]
        ax.bar([i for i in x if ok[i]], [v for v, o in zip(vals, ok) if o],
               yerr=[[v for v, o in zip(lo, ok) if o], [v for v, o in zip(hi, ok) if o]],
               color=[c for c, o in zip(colors, ok) if o], capsize=3)
        ax.set_yscale("log")
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
        unit = next((r["unit"] for r in recs if r.get("unit")), "")
        ax.set_ylabel("bytes per node (RSS)" if workload == "memory" else f"seconds per {unit}", fontsize=8)
        ax.set_title(f"{workload}\n{variant}", fontsize=9)
        ax.grid(axis="y", which="major", alpha=0.3)
    if scaling:
        wl_mod.plot_batch_scaling(list(axes.flat)[len(panels)], results)
    for ax in list(axes.flat)[len(panels) + scaling:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {os.path.relpath(path)}"


def find(results, workload, engine, variant=None):
    for rec in results:
        if rec["workload"] == workload and rec["engine"] == engine and (variant is None or rec["variant"] == variant):
            return rec
    return None


def targets(results) -> list[dict]:
    """docs/design.md section 5, checked against this run's medians."""
    out = []

    def add(name, value, target, ok, text):
        out.append({"target": name, "value": value, "goal": target, "met": ok, "text": text})

    seed = find(results, "seed", "fastgrad")
    if seed and seed["status"] == "ok":
        us = seed["median_s"] * 1e6
        add("seed fwd+bwd", us, TARGETS["seed_us"], us <= TARGETS["seed_us"],
            f"seed fwd+bwd: {us:.2f} µs (min {seed['min_s'] * 1e6:.2f}; target <= {TARGETS['seed_us']:g} µs)")
    for rec in results:
        if rec["workload"] == "mlp_step" and rec["engine"] == "micrograd" and rec.get("vs_fastgrad"):
            r = rec["vs_fastgrad"]
            ref = find(results, "mlp_step", "fastgrad", rec["variant"])
            rmin = rec["min_s"] / ref["min_s"]
            add(f"mlp_step speedup ({rec['variant'].split(', ')[-1]})", r, TARGETS["mlp_speedup"],
                r >= TARGETS["mlp_speedup"],
                f"mlp_step [{rec['variant']}]: micrograd / fastgrad = {r:.1f}x "
                f"(of the minima {rmin:.1f}x; target >= {TARGETS['mlp_speedup']:g}x)")
    for rec in results:
        # the same speed-up with micrograd's nn.py verbatim on fastgrad's Value (a neuron is
        # sum(wi*xi): one node per op) instead of fastgrad.nn's fused dot
        if rec["workload"] == "mlp_step" and rec["engine"] == "micrograd" and rec["status"] == "ok":
            mine = find(results, "mlp_step", wl_mod.FG_MICROGRAD_NN, rec["variant"])
            if mine and mine["status"] == "ok":
                r, rmin = rec["median_s"] / mine["median_s"], rec["min_s"] / mine["min_s"]
                add(f"mlp_step speedup, micrograd's nn.py ({rec['variant'].split(', ')[-1]})", r,
                    TARGETS["mlp_speedup"], r >= TARGETS["mlp_speedup"],
                    f"mlp_step [{rec['variant']}], micrograd's own nn.py on fastgrad: micrograd / "
                    f"{wl_mod.FG_MICROGRAD_NN} = {r:.1f}x (of the minima {rmin:.1f}x; "
                    f"target >= {TARGETS['mlp_speedup']:g}x)")
    fl = find(results, "random_backward", "c_floor")
    if fl and fl.get("vs_fastgrad"):
        r = 1.0 / fl["vs_fastgrad"]
        ref = find(results, "random_backward", "fastgrad", fl["variant"])
        rmin = ref["min_s"] / fl["min_s"]
        add("random_backward vs C floor", r, TARGETS["floor_ratio"], r <= TARGETS["floor_ratio"],
            f"random_backward: fastgrad / C floor = {r:.2f}x "
            f"(of the minima {rmin:.2f}x; target <= {TARGETS['floor_ratio']:g}x)")
    fg = find(results, "mlp_compiled", "fastgrad")
    fl = find(results, "mlp_compiled", "c_floor")
    if fg and fl and fg["status"] == fl["status"] == "ok":
        r, rmin = fg["median_s"] / fl["median_s"], fg["min_s"] / fl["min_s"]
        goal = TARGETS["replay_floor_ratio"]
        add("compiled replay vs C floor", r, goal, r <= goal,
            f"mlp_compiled: fastgrad value_and_grad step / C loop over the same tape = {r:.2f}x "
            f"(of the minima {rmin:.2f}x; target <= {goal:g}x)")
    for mine, peer, label in FASTER_THAN:
        a, b = find(results, "mlp_compiled", mine), find(results, "mlp_compiled", peer)
        if a and b and a["status"] == b["status"] == "ok":
            r, rmin = b["median_s"] / a["median_s"], b["min_s"] / a["min_s"]
            add(label, r, 1.0, r > 1.0,
                f"mlp_compiled: {peer} / {mine} = {r:.2f}x (of the minima {rmin:.2f}x; target > 1x: "
                f"{mine} faster)")
    for rec in results:
        if rec["workload"] == "hessian" and rec["engine"] == "jax" and rec["status"] == "ok":
            mine = find(results, "hessian", "fastgrad", rec["variant"])
            if mine and mine["status"] == "ok":
                r, rmin = rec["median_s"] / mine["median_s"], rec["min_s"] / mine["min_s"]
                add(f"hessian vs JAX jit ({rec['variant'].split(' ')[0]})", r, 1.0, r > 1.0,
                    f"hessian [{rec['variant']}]: jax / fastgrad = {r:.2f}x (of the minima "
                    f"{rmin:.2f}x; target > 1x: fastgrad faster)")
    cg = find(results, "create_graph", "fastgrad")
    if cg and cg["status"] == "ok":
        for peer, key, label in (("fastgrad-forward", "create_graph_forward", "forward build"),
                                 ("torch", "create_graph_torch", "torch 0-d tensors")):
            rec = find(results, "create_graph", peer)
            if not (rec and rec["status"] == "ok"):
                continue
            goal = TARGETS[key]
            if peer == "torch":
                r, rmin = rec["median_s"] / cg["median_s"], rec["min_s"] / cg["min_s"]
                ok, text = r >= goal, f"torch / fastgrad = {r:.1f}x (of the minima {rmin:.1f}x; target >= {goal:g}x)"
            else:
                r, rmin = cg["median_s"] / rec["median_s"], cg["min_s"] / rec["min_s"]
                ok, text = r <= goal, (f"fastgrad / its forward build = {r:.2f}x (of the minima {rmin:.2f}x; "
                                       f"target <= {goal:g}x)")
            add(f"create_graph vs {label}", r, goal, ok, f"create_graph: {text}")
    mem = find(results, "memory", "fastgrad")
    if mem and mem["status"] == "ok" and "array_bytes_per_slot" in mem["info"]:
        b = mem["info"]["array_bytes_per_slot"]
        add("bytes per node", b, TARGETS["bytes_per_node"], b <= TARGETS["bytes_per_node"],
            f"memory: {b:.1f} array bytes per node slot (target <= {TARGETS['bytes_per_node']:g})")
    out += wl_mod.dask_scaling_targets(results)
    return out


def loadavg():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def meta(cfg, loaded, skipped, load_start) -> dict:
    import sysconfig

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or None
    except OSError:
        commit = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu,
            "cpus": os.cpu_count(), "cc": sysconfig.get_config_var("CC"), "commit": commit,
            "loadavg_1_5_15_at_start": load_start,
            "loadavg_1_5_15_at_end": loadavg(),
            "engines": {e.name: e.version for e in loaded}, "skipped_engines": skipped,
            "config": dataclasses.asdict(cfg),
            "timing": "perf_counter around a batch of calls per repetition, repetitions "
                      "interleaved across engines, each after one untimed warm-up call (if a call "
                      "takes < 0.5 s); gc.collect() before each repetition (untimed); "
                      "gc enabled while timing unless the variant says gc off; graph building "
                      "outside the timed call runs with gc disabled; times are per unit"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: fewer repetitions, smaller graphs")
    p.add_argument("--engines", default=",".join(e.name for e in engines_mod.ENGINES),
                   help="comma-separated engines (default: all known: %(default)s)")
    p.add_argument("--workloads", default=None,
                   help="comma-separated subset of: " + ",".join(w.name for w in wl_mod.WORKLOADS) + ",memory"
                        " (and dask_scaling, which starts LocalClusters: run only when named)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"), help="where to write results")
    p.add_argument("--plot", default=None,
                   help="PNG of the results (default: beside --json, .png; needs matplotlib)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--reps", type=int, default=None, help="override the repetition count")
    p.add_argument("--random-n", type=int, default=None, help="override random_backward's graph size")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--memory-n", type=int, default=100_000, help=argparse.SUPPRESS)
    p.add_argument("--memory-mode", default="rss", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        return memory_child(args)

    cfg = make_config(args)
    known = {e.name: e for e in engines_mod.ENGINES}
    wanted = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        p.error(f"unknown engines {unknown}; known: {sorted(known)}")
    names = [w.name for w in wl_mod.WORKLOADS] + ["memory"]
    chosen = names if args.workloads is None else [w.strip() for w in args.workloads.split(",")]
    names = names + ["dask_scaling"]    # opt-in: not in the default run
    if set(chosen) - set(names):
        p.error(f"unknown workloads {sorted(set(chosen) - set(names))}; known: {names}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    loaded, skipped = [], {}
    for name in wanted:
        eng = known[name]
        try:
            eng.load()
            loaded.append(eng)
        except Exception as exc:
            skipped[name] = failure(exc)
            print(f"skipping engine {name}: {skipped[name]}")
    if not loaded:
        print("no engine could be loaded")
        return 1

    t_start = time.perf_counter()
    load_start = loadavg()
    ctx: dict = {}
    results = []
    for workload in wl_mod.WORKLOADS:
        if workload.name not in chosen:
            continue
        for variant in workload.variants(cfg):
            log(f"{workload.name} {variant.key}")
            results += measure(workload, variant, loaded, cfg, ctx, log)
    if "memory" in chosen:
        log("memory")
        results += memory(loaded, cfg, log)
    if "dask_scaling" in chosen:
        log("dask_scaling")
        results += wl_mod.dask_scaling(cfg, log)
    ctx.clear()
    elapsed = time.perf_counter() - t_start

    tg = targets(results)
    print(f"\n## fastgrad benchmark ({'quick' if cfg.quick else 'full'} run, {elapsed:.0f} s)\n")
    print(table(results))
    if tg:
        print("\nTargets (docs/design.md section 5):\n")
        for t in tg:
            print(f"- [{'x' if t['met'] else ' '}] {t['text']}")
    st = wl_mod.scaling_table(results)
    if st:
        print("\nbatch_scaling (median time per call; peak RSS growth of one call):\n")
        print(st)
    md = modes(results)
    if md:
        print("\nHow each engine runs it:\n")
        print("\n".join(md))
    if skipped:
        print("\nEngines not installed (skipped):\n")
        print("\n".join(f"- {name}: {why}" for name, why in skipped.items()))
    print("\nvs fastgrad = engine time / fastgrad time (memory: bytes / bytes); "
          "seed max(z,w) is (z-w).relu()+w on every engine.")
    doc = {"meta": meta(cfg, loaded, skipped, load_start), "results": results, "targets": tg, "elapsed_s": elapsed}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"\nwrote {os.path.relpath(args.json)}")
    if not args.no_plot and (args.plot or args.json):
        path = args.plot or os.path.splitext(args.json)[0] + ".png"
        load = doc["meta"]["loadavg_1_5_15_at_start"]
        title = (f"fastgrad benchmark, {'quick' if cfg.quick else 'full'} run, {doc['meta']['cpu']} "
                 f"x{doc['meta']['cpus']}" + (f", load {load[0]:.1f}" if load else ""))
        print(plot(results, path, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
