"""NMSR against the anchors on the randomised ground-truth suite (issue 8).

    python benchmarks/bench_suite.py --suite heldout                         # all families, 4 seeds each
    python benchmarks/bench_suite.py --suite heldout --methods farneback,dis,openpiv --jobs 2
    python benchmarks/bench_suite.py --suite tuning --families vortex,disk --nmsr-set smoothness=1
    python benchmarks/bench_suite.py --selfcheck                             # anchors on known motion

For every case of the split (:func:`napari_nmsr.core.families.suite_cases`)
each method estimates the fields; NMSR is exactly what a user gets:
``register(frames, mask=case mask, config=RegistrationConfig(**--nmsr-set))``.
Endpoint error is measured inside the case mask on the fixed frame (as
bench_registration.py). Per family it prints the mean and 95th-percentile EPE
of every method side by side (p95: mean over the family's cases of each
case's p95), the ratio of NMSR to the best anchor (farneback, dis, openpiv,
ants: the one with the lowest family mean), and the worst family; for the
disk family the error of the fitted rigid rotation (omega, %), for vortex
cases the centre error (px) and the circulation error (%); s/pair.

``--methods oracle`` adds, for vortex cases, the true field with each pair's vortex amplitude fitted
to the frames (:mod:`amplitude_oracle`): its circulation error is what the frames alone leave when
the vortex's shape and centre are known: a reference floor for methods that read one pair at a time
(not a proof; see that module). It is not an anchor (never the "best anchor").

The vortex centre is read two ways, the same for every method: the peak of
the smoothed vorticity (:func:`~napari_nmsr.core.simulate.vortex_centre`,
pixel-quantised, the suite's first measure), and the main vortex of
:func:`~napari_nmsr.core.analysis.pipeline.analyze_fields` - the Gamma-2 core
centroid that ``nmsr analyze`` and the plugin's vortex layer show - with the
share of pairs in which that detector finds a core at all.

For every method and case it also reports how often the estimate matches the frames at least as
well as the true motion does (the engine's final match over the mask, and for vortices near the
core): where it does, the remaining error is one the frames do not see, so no harder fit removes it.

Generated cases and anchor rows are cached under benchmarks/results/cache/
(keyed by family, seed, suite version and anchor settings), so re-running
only NMSR is fast. NMSR rows are never cached.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import baselines as bl  # noqa: E402
from amplitude_oracle import ALPHAS, INNER, MATCHED, OUTER, amplitude_oracle, final_match, near_core  # noqa: E402
from baselines import ANCHORS, BASELINES, BaselineUnavailable  # noqa: E402

from napari_nmsr.core.analysis.pipeline import analyze_fields  # noqa: E402
from napari_nmsr.core.convention import warp  # noqa: E402
from napari_nmsr.core.families import (  # noqa: E402
    FAMILIES,
    SUITE_VERSION,
    RealDataUnavailable,
    circulation,
    fit_rigid_rotation,
    suite_cases,
)
from napari_nmsr.core.refine import fixed_means, match_map  # noqa: E402
from napari_nmsr.core.register import RegistrationConfig, register  # noqa: E402
from napari_nmsr.core.simulate import SimulatedSequence, vortex_centre  # noqa: E402

CACHE = HERE / "results" / "cache"
DEFAULT_JSON = HERE / "results" / "suite.json"
METHODS = ("nmsr", "farneback", "dis", "openpiv", "ants", "zero", "oracle")


# --------------------------------------------------------------------------- cases (cached)


def _case_key(family: str, seed: int, size: int | None = None) -> str:
    """The cache name of a case (and of its anchors' rows): ``size`` cases are kept apart."""
    return f"v{SUITE_VERSION}_{family}_{seed}" + (f"_{size}px" if size else "")


def _case_path(family: str, seed: int, size: int | None = None) -> Path:
    return CACHE / "cases" / f"{_case_key(family, seed, size)}.npz"


def load_case(family: str, seed: int, size: int | None = None) -> SimulatedSequence:
    """The case (family, seed), generated once and then read from the cache; ``size``: frames of
    that many px instead of the family's random size (same seed, same motion parameters)."""
    path = _case_path(family, seed, size)
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        truth = json.loads(str(z["truth"]))
        centres = z["vortex_centres"] if z["vortex_centres"].size else None
        return SimulatedSequence(
            name=family, description=str(z["description"]), frames=z["frames"], fields=z["fields"],
            masks=z["masks"], vortex_centres=centres, frame_interval_s=1 / 30, pixel_spacing_mm=(1.0, 1.0),
            truth=truth)
    seq = FAMILIES[family](seed, size=size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{os.getpid()}.npz")
    np.savez_compressed(tmp, frames=seq.frames, fields=seq.fields, masks=seq.masks,
                        vortex_centres=np.zeros(0) if seq.vortex_centres is None else seq.vortex_centres,
                        truth=json.dumps(seq.truth), description=seq.description)
    os.replace(tmp, path)
    return seq


# --------------------------------------------------------------------------- metrics


def evaluate(seq: SimulatedSequence, est: np.ndarray) -> dict:
    """EPE inside masks[t+1]; omega error for the disk; centre and circulation error for vortices."""
    truth = seq.fields
    err = np.hypot(est[:, 0] - truth[:, 0], est[:, 1] - truth[:, 1])[seq.masks[1:]]
    speed = np.hypot(truth[:, 0], truth[:, 1])[seq.masks[1:]]
    out = {"epe_mean": float(err.mean()), "epe_p95": float(np.percentile(err, 95)),
           "true_mean": float(speed.mean()), "true_max": float(speed.max())}
    info = seq.truth or {}
    if "omega" in info:
        rel = []
        for t in range(len(est)):
            om, _, _ = fit_rigid_rotation(est[t], seq.masks[t + 1])
            rel.append(100.0 * (om / info["omega"] - 1.0))
        out["omega_err_pct"] = float(np.mean(np.abs(rel)))
        out["omega_bias_pct"] = float(np.mean(rel))
    if seq.vortex_centres is not None and "core_radius" in info:
        size = seq.frames.shape[-1]
        sigma = 2.0 * size / 128.0
        core = float(info["core_radius"])
        cerr, gerr = [], []
        for t in range(len(est)):
            c_true = seq.vortex_centres[t]
            cerr.append(float(np.hypot(*(vortex_centre(est[t], seq.masks[t + 1], sigma) - c_true))))
            g_true = circulation(truth[t], c_true, core)
            gerr.append(100.0 * abs(circulation(est[t], c_true, core) / g_true - 1.0))
        out["centre_err_px"] = float(np.mean(cerr))
        out["circulation_err_pct"] = float(np.mean(gerr))
        out.update(_core_centre(seq, est))
    out.update(_match_against_truth(seq, est))
    return out


@torch.no_grad()
def _match_against_truth(seq: SimulatedSequence, est: np.ndarray) -> dict:
    """How well the estimate matches the frames, against how well the true motion does.

    The match is the engine's final one (the refinement's local NCC, its window radii, frame t
    resampled as it resamples), averaged over ``masks[t+1]`` and, for vortex cases, also over the part
    of it within ``MATCHED`` core radii of the true centre. ``beats_truth_pct``: the share of pairs
    whose estimate matches at least as well as the truth; ``match_minus_truth``: the mean difference.
    An error in a pair whose estimate matches better than the truth lies where the frames do not tell
    the two apart: fitting the frames harder cannot remove it, only a prior or more data can (the
    thirty-second session, benchmarks/README.md, on slow vortices).
    """
    radius, mode = final_match()
    vortex = seq.vortex_centres is not None and "core_radius" in (seq.truth or {})
    yy, xx = np.mgrid[0 : est.shape[-2], 0 : est.shape[-1]]
    gains, near = [], []
    for t in range(len(est)):
        mov = torch.from_numpy(np.ascontiguousarray(seq.frames[t], np.float32))[None, None]
        fix = torch.from_numpy(np.ascontiguousarray(seq.frames[t + 1], np.float32))[None, None]
        means = fixed_means(fix, radius)
        maps = [match_map(warp(mov, torch.from_numpy(np.ascontiguousarray(u, np.float32))[None], mode), fix,
                          radius, means)[0, 0].numpy() for u in (est[t], seq.fields[t])]
        mask = np.asarray(seq.masks[t + 1], bool)
        gains.append(float(maps[0][mask].mean() - maps[1][mask].mean()))
        if vortex:
            region = mask & near_core(yy, xx, seq.vortex_centres[t], float(seq.truth["core_radius"]))
            if region.any():
                near.append(float(maps[0][region].mean() - maps[1][region].mean()))
    out = {"beats_truth_pct": float(100.0 * np.mean(np.asarray(gains) >= 0.0)),
           "match_minus_truth": float(np.mean(gains))}
    if near:
        out["vortex_beats_truth_pct"] = float(100.0 * np.mean(np.asarray(near) >= 0.0))
    return out


def _core_centre(seq: SimulatedSequence, est: np.ndarray) -> dict:
    """Centre error (px) of the main vortex the analysis reports, over the pairs where it finds one."""
    found = analyze_fields(est, seq.masks, with_strain=False).vortex_centres_yx()
    err = np.hypot(*(found - seq.vortex_centres).T)
    ok = np.isfinite(err)
    out = {"core_found_pct": float(100.0 * ok.mean())}
    if ok.any():
        out["core_centre_err_px"] = float(err[ok].mean())
    return out


# --------------------------------------------------------------------------- methods


def _anchor_key(method: str) -> str:
    settings = {"farneback": bl.FARNEBACK, "dis": bl.DIS, "openpiv": bl.OPENPIV, "ants": bl.ANTS,
                "oracle": _oracle_settings()}.get(method, {})
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _run_anchor(family: str, seed: int, method: str, threads: int, use_cache: bool = True,
                size: int | None = None) -> dict:
    """One anchor on one case: cached row (metrics and cost)."""
    path = CACHE / "anchors" / f"{_case_key(family, seed, size)}_{method}_{_anchor_key(method)}.json"
    cached = json.loads(path.read_text()) if use_cache and path.is_file() else None
    if cached is not None and not _lacks_metrics(cached):
        return cached
    _set_threads(threads)
    row = {"family": family, "seed": seed, "method": method}
    try:
        seq = load_case(family, seed, size)
    except RealDataUnavailable as exc:
        return {**row, "status": f"skipped: {exc}"}
    if method == "oracle" and (seq.vortex_centres is None or "core_radius" not in (seq.truth or {})):
        return {**row, "status": "skipped: no vortex in this case"}
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        est = amplitude_oracle(seq) if method == "oracle" else BASELINES[method](seq.frames)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    except BaselineUnavailable as exc:
        return cached if cached is not None else {**row, "status": f"skipped: {exc}"}
    n = len(seq.frames) - 1
    row.update(status="ok", size=int(seq.frames.shape[-1]), n_frames=int(seq.frames.shape[0]),
               s_per_pair=wall / n, cpu_s_per_pair=cpu / n, **evaluate(seq, est))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, path)
    return row


def _oracle_settings() -> dict:
    """What the oracle's rows depend on (a change re-runs them): its amplitudes, regions and the match."""
    radius, mode = final_match()
    return {"alphas": [float(a) for a in ALPHAS], "regions": [INNER, OUTER, MATCHED], "radius": radius, "mode": mode}


def _lacks_metrics(row: dict) -> bool:
    """A row cached before the Gamma-2 centre or the match against the truth was measured (recomputed
    when the method is installed)."""
    return row.get("status") == "ok" and (("centre_err_px" in row and "core_found_pct" not in row)
                                          or "beats_truth_pct" not in row)


def _run_nmsr(seq: SimulatedSequence, family: str, seed: int, overrides: dict) -> dict:
    row = {"family": family, "seed": seed, "method": "nmsr"}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    res = register(seq.frames, mask=seq.masks, config=RegistrationConfig(**overrides))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n = len(seq.frames) - 1
    row.update(status="ok", size=int(seq.frames.shape[-1]), n_frames=int(seq.frames.shape[0]),
               s_per_pair=wall / n, cpu_s_per_pair=cpu / n,
               **evaluate(seq, np.asarray(res.fields[-1], np.float32)))
    row["notes"] = list(res.notes)  # what the engine decided beyond its plan (an extended scale, a blur)
    return row


def _set_threads(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:
        pass


def _prepare(family: str, seed: int, anchors, threads: int, use_cache: bool,
             size: int | None = None) -> tuple[list[dict], float]:
    """Generate (or load) a case and run the anchors on it; returns (rows, generation seconds)."""
    t0 = time.perf_counter()
    fresh = not _case_path(family, seed, size).is_file()
    try:
        load_case(family, seed, size)
    except RealDataUnavailable as exc:
        return [{"family": family, "seed": seed, "method": m, "status": f"skipped: {exc}"} for m in anchors], 0.0
    gen = time.perf_counter() - t0 if fresh else 0.0
    return [_run_anchor(family, seed, m, threads, use_cache, size) for m in anchors], gen


def run(args) -> dict:
    _set_threads(args.threads)
    cases = suite_cases(args.suite, args.per_family, args.families, args.first_case)
    anchors = [m for m in args.methods if m != "nmsr"]
    rows: list[dict] = []
    t0 = time.perf_counter()
    gen_total = 0.0
    if args.jobs > 1:
        with cf.ProcessPoolExecutor(args.jobs) as pool:
            futs = [pool.submit(_prepare, f, s, anchors, args.threads, not args.no_cache, args.size)
                    for f, s in cases]
            prepared = [f.result() for f in futs]
    else:
        prepared = []
        for f, s in cases:
            prepared.append(_prepare(f, s, anchors, args.threads, not args.no_cache, args.size))
            _print_rows(prepared[-1][0])
    for (fam, seed), (anchor_rows, gen) in zip(cases, prepared):
        gen_total += gen
        rows.extend(anchor_rows)
        if args.jobs > 1:
            _print_rows(anchor_rows)
    anchors_s = time.perf_counter() - t0
    if "nmsr" in args.methods:
        for fam, seed in cases:
            try:
                seq = load_case(fam, seed, args.size)
            except RealDataUnavailable as exc:
                rows.append({"family": fam, "seed": seed, "method": "nmsr", "status": f"skipped: {exc}"})
                continue
            row = _run_nmsr(seq, fam, seed, args.nmsr_set)
            rows.append(row)
            _print_rows([row])
    return {
        "meta": {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "suite": args.suite, "per_family": args.per_family, "first_case": args.first_case, "size": args.size,
            "families": args.families,
            "suite_version": SUITE_VERSION, "cases": [[f, s] for f, s in cases],
            "methods": args.methods, "nmsr_overrides": args.nmsr_set, "threads": args.threads, "jobs": args.jobs,
            "seconds_generation_new_cases": gen_total, "seconds_generation_and_anchors": anchors_s,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "anchor_settings": {"farneback": bl.FARNEBACK, "dis": bl.DIS, "openpiv": bl.OPENPIV},
            "notes": "EPE inside masks[t+1]; family p95 = mean of the cases' p95; omega error = mean over pairs "
                     "of |omega_fit / omega_true - 1| (Procrustes fit inside the disk); circulation = line "
                     "integral of the motion around the true core radius about the true centre, same for truth "
                     "and estimate; core centre = main vortex of analyze_fields (Gamma-2 core centroid), "
                     "mean over the pairs where one is found.",
        },
        "results": rows,
    }


def _print_rows(rows) -> None:
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['family']:<14} {r['seed']:>11} {r['method']:<10} {r['status']}", flush=True)
            continue
        extra = ""
        if "omega_err_pct" in r:
            extra += f"  omega err {r['omega_err_pct']:.1f}%"
        if "centre_err_px" in r:
            extra += f"  centre {r['centre_err_px']:.1f} px  circ {r['circulation_err_pct']:.0f}%"
        if "core_found_pct" in r:
            core = f"{r['core_centre_err_px']:.1f} px" if "core_centre_err_px" in r else "-"
            extra += f"  core {core} ({r['core_found_pct']:.0f}% found)"
        print(f"  {r['family']:<14} {r['seed']:>11} {r['size']:>4}px x{r['n_frames']:<3} |u| {r['true_mean']:5.2f} / "
              f"{r['true_max']:5.2f}  {r['method']:<10} EPE {r['epe_mean']:.3f} / {r['epe_p95']:.3f}  "
              f"{r['s_per_pair']:.3f} s/pair{extra}", flush=True)


# --------------------------------------------------------------------------- report


def summarise(rows) -> dict:
    """Per (family, method): means over the family's cases of every metric."""
    out: dict = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        out.setdefault(r["family"], {}).setdefault(r["method"], []).append(r)
    summary = {}
    for fam, by in out.items():
        summary[fam] = {}
        for m, rs in by.items():
            keys = list(dict.fromkeys(k for r in rs for k in r if isinstance(r[k], float)))
            summary[fam][m] = {k: float(np.mean([r[k] for r in rs if k in r])) for k in keys}
            summary[fam][m]["n"] = len(rs)
    return summary


def report(result: dict) -> str:
    summary = summarise(result["results"])
    methods = [m for m in result["meta"]["methods"] if any(m in s for s in summary.values())]
    fams = list(summary)
    w = 16
    lines = ["EPE inside the mask, px: mean / p95 (mean over cases); ratio = nmsr / best anchor; "
             "true |u| in the mask: mean / max", ""]
    head = (f"{'family':<14}{'n':>3}{'true |u|':>14}" + "".join(f"{m:>{w}}" for m in methods)
            + f"{'best anchor':>14}{'ratio':>8}")
    lines += [head, "-" * len(head)]
    ratios = {}
    for fam in fams:
        s = summary[fam]
        n = max(v["n"] for v in s.values())
        any_m = next(iter(s.values()))
        speeds = f"{any_m['true_mean']:.2f} / {any_m['true_max']:.1f}"
        line = f"{fam:<14}{n:>3}{speeds:>14}"
        for m in methods:
            cell = f"{s[m]['epe_mean']:.2f} / {s[m]['epe_p95']:.2f}" if m in s else "-"
            line += f"{cell:>{w}}"
        present = [a for a in ANCHORS if a in s]
        best = min(present, key=lambda a: s[a]["epe_mean"]) if present else None
        ratio = s["nmsr"]["epe_mean"] / s[best]["epe_mean"] if best and "nmsr" in s else None
        if ratio is not None:
            ratios[fam] = ratio
        line += f"{best or '-':>14}{(f'{ratio:.2f}' if ratio is not None else '-'):>8}"
        lines.append(line)
    if ratios:
        worst = max(ratios, key=ratios.get)
        lines += ["", f"worst family: {worst} (nmsr / best anchor = {ratios[worst]:.2f})"]
    else:
        worst_by = {}
        for fam in fams:
            present = [a for a in ANCHORS if a in summary[fam]]
            if present:
                worst_by[fam] = min(summary[fam][a]["epe_mean"] for a in present)
        if worst_by:
            hard = max(worst_by, key=worst_by.get)
            lines += ["", f"hardest family for the anchors: {hard} (best anchor EPE {worst_by[hard]:.2f} px)"]
    for key, title, fmt in [("omega_err_pct", "Disk: fitted omega error, % (mean |omega/true - 1| over pairs)", "{:.1f}"),
                            ("centre_err_px", "Vortex centre error, px (peak of the smoothed vorticity)", "{:.1f}"),
                            ("core_centre_err_px", "Vortex centre error, px (main Gamma-2 core of nmsr analyze, "
                                                   "pairs where one is found)", "{:.1f}"),
                            ("core_found_pct", "Pairs where nmsr analyze finds a vortex core, %", "{:.0f}"),
                            ("circulation_err_pct", "Circulation error, % (|G/G_true - 1|)", "{:.0f}"),
                            ("beats_truth_pct", "Pairs whose estimate matches the frames at least as well as the "
                                                "true motion, % (the refinement's local NCC over the mask)", "{:.0f}"),
                            ("vortex_beats_truth_pct", "The same within 2 core radii of the true vortex centre, %",
                             "{:.0f}"),
                            ("s_per_pair", "Seconds per pair (wall)", "{:.3f}")]:
        fam_with = [f for f in fams if any(key in v for v in summary[f].values())]
        if not fam_with:
            continue
        lines += ["", title, f"{'family':<14}" + "".join(f"{m:>{w}}" for m in methods)]
        for fam in fam_with:
            s = summary[fam]
            lines.append(f"{fam:<14}" + "".join(
                f"{(fmt.format(s[m][key]) if m in s and key in s[m] else '-'):>{w}}" for m in methods))
    meta = result["meta"]
    lines += ["", f"case generation (new cases, summed over processes): {meta['seconds_generation_new_cases']:.0f} s; generation + anchors: "
                  f"{meta['seconds_generation_and_anchors']:.0f} s (wall, jobs={meta['jobs']})"]
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- self-check


def selfcheck() -> bool:
    """Each anchor recovers a known translation and a known small rotation (pull convention)."""
    from napari_nmsr.core.simulate import CASES

    _set_threads(1)
    image = CASES["large_motion"](size=128, n_frames=2, seed=0).frames[0]
    ok = True
    for name in ("farneback", "dis", "openpiv", "ants"):
        for kind, size in (("translation", 3.0), ("translation", 0.6), ("rotation", 0.05)):
            try:
                err, good = bl.check_convention(BASELINES[name], image, kind, size)
            except BaselineUnavailable as exc:
                print(f"selfcheck {name}: skipped ({exc})")
                break
            ok &= good
            print(f"selfcheck {name:<10} {kind:<11} {size:>5}: median EPE {err:.3f} px -> {'OK' if good else 'FAIL'}")
    return bool(ok)


# --------------------------------------------------------------------------- command line


def _overrides(items) -> dict:
    from napari_nmsr.cli_checks import split_setting

    try:
        overrides = dict(split_setting(item) for item in items or [])
        RegistrationConfig(**overrides)  # refused here, before any case runs, not at the first NMSR row
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--nmsr-set: {exc}") from None
    return overrides


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=("heldout", "tuning"), default="heldout")
    p.add_argument("--per-family", type=int, default=4, help="cases per family")
    p.add_argument("--first-case", type=int, default=0, metavar="N",
                   help="start each family at its N-th case (0-based): --first-case 4 --per-family 8 runs cases "
                        "5-12, beyond the four the reported table uses, to check a change on cases nobody looked at")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families")
    p.add_argument("--methods", default="nmsr,farneback,dis,openpiv,ants,oracle",
                   help=f"comma-separated from {METHODS} (oracle: vortex cases only, see amplitude_oracle.py)")
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads per process")
    p.add_argument("--size", type=int, default=None,
                   help="frames of this many px in every case instead of each case's own size (128-512); "
                        "large frames are where the registered box, the crops and the step budget differ most")
    p.add_argument("--jobs", type=int, default=1, help="processes for case generation and anchors")
    p.add_argument("--nmsr-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="RegistrationConfig overrides, e.g. smoothness=1 steps=50 (values parsed as Python literals)")
    p.add_argument("--no-cache", action="store_true", help="recompute anchor rows (cases stay cached)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    p.add_argument("--selfcheck", action="store_true", help="only check the anchors' field convention")
    args = p.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in args.families if f not in FAMILIES]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad += [m for m in args.methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown families/methods: {', '.join(bad)}")
    args.nmsr_set = _overrides(args.nmsr_set)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.selfcheck:
        return 0 if selfcheck() else 1
    result = run(args)
    print()
    print(report(result))
    write_json(result, args.json)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
