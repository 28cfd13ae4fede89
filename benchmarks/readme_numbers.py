"""Regenerate the README's "What was measured" table: every number in it, from one run of this script.

    python benchmarks/readme_numbers.py            # measure, write results/readme/cpu.json, update README
    python benchmarks/readme_numbers.py --no-readme

The table goes between the README's ``<!-- readme-numbers:start -->`` and ``<!-- readme-numbers:end -->`` markers,
headed by the run that produced it (date, commit, CPU, versions). It repeats, outside a notebook, what chapters 03,
04, 06, 07, 08, 09, 10 and 11 measure, with the package's own calls, so each row says where its number comes from.
It takes a few minutes on a 2-core CPU (calibration, exports, ModelOpt, both simplifiers, the sensitivity analysis).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- readme-numbers:start -->", "<!-- readme-numbers:end -->"

Row = tuple[str, str]


def _timed(fn: Callable, *args: object, **kwargs: object) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _import_time() -> Row:
    code = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"
    seconds = {}
    for module in ("torch", "bevnb"):
        out = subprocess.run([sys.executable, "-c", code.format(module)], capture_output=True, text=True, check=True)
        seconds[module] = float(out.stdout.strip().splitlines()[-1])
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, bevnb; print(', '.join(m for m in ('pytorch_quantization', 'modelopt', "
            "'onnxruntime', 'matplotlib') if m in sys.modules) or 'none')",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return "`import bevnb` (fresh interpreter)", (
        f"{seconds['bevnb']:.2f} s (`import torch` alone {seconds['torch']:.2f} s); of pytorch-quantization, ModelOpt, "
        f"ONNX Runtime and matplotlib it loads: {loaded}"
    )


def measure() -> list[Row]:
    """Every row of the table, measured now."""
    import torch

    import bevnb
    from bevnb import failures, graphs, quant, sensitivity, toolchains
    from bevnb.diagnosis import Graphs, diagnose_many
    from bevnb.evaluation import evaluate_detector, trained_detector
    from bevnb.export import export_head
    from bevnb.oracle import footprint_margin, oracle_lift
    from bevnb.paths import TRAINED_WEIGHTS, build_dir
    from bevnb.pipeline import SplitCamera
    from bevnb.rig import FIVE_CAMERA_RIG_PATH, default_rig, load_rig
    from bevnb.validation import ensure_exported, graph_parity, validate

    rows: list[Row] = [_import_time()]
    model = bevnb.build_camera_model(TRAINED_WEIGHTS)  # the chapters' default: the shipped trained weights
    sample = bevnb.make_sample("synthetic", seed=0)

    files = bevnb.export_camera(model, build_dir("readme", "fp16"), "fp16", verbose=False)
    back, vt = files["camera.backbone.onnx"], files["camera.vtransform.onnx"]
    convs = graphs.op_counts(graphs.load(back.path))["Conv"]
    rows.append(
        (
            "fp16 export of both graphs (chapter 03)",
            f"{back.seconds + vt.seconds:.1f} s; backbone {back.size_bytes / 1e6:.1f} MB, {back.nodes} nodes "
            f"({convs} Conv); vtransform {vt.size_bytes / 1e6:.1f} MB, {vt.nodes} nodes",
        )
    )
    parity = graph_parity(model, back.path.parent, {"zeros": bevnb.make_sample("zeros"), "synthetic": sample})
    worst = max(float(r[4]) for r in parity.rows)
    rows.append(
        ("ONNX Runtime vs PyTorch, both graphs (chapter 03)", f"rel. error ≤ {worst:.2g} of each output's scale")
    )

    plan, seconds = _timed(bevnb.plan_bev_pool, bevnb.make_sample("zeros"), use_cache=False)
    summary = plan.summary()
    rows.append(
        (
            "bev_pool plan, canonical calibration (chapter 06)",
            f"{summary['kept points']:,} of {summary['candidate points']:,} frustum points kept, "
            f"{summary['cells hit']:,} BEV cells hit, {seconds:.2f} s",
        )
    )

    pq = quant.quantize_camera(bevnb.build_camera_model(TRAINED_WEIGHTS))
    scenes = list(quant.synthetic_inputs(quant.DEFAULT_CALIB_SAMPLES))
    pq_seconds = quant.calibrate(pq, scenes, "mse", progress=False)
    int8_files = bevnb.export_camera(pq, build_dir("readme", "int8"), "int8", verbose=False)
    int8_path = int8_files["camera.backbone.onnx"].path
    ops = graphs.op_counts(graphs.load(int8_path))
    counted = graphs.count_quantized(graphs.load(int8_path))
    rows.append(
        (
            "int8 backbone (chapter 04)",
            f"{ops['QuantizeLinear']} QuantizeLinear/{ops['DequantizeLinear']} DequantizeLinear after onnxsim "
            f"({counted['weights']} per-channel weights, {counted['activations']} per-tensor activations)",
        )
    )

    held_out = bevnb.make_sample("synthetic", seed=quant.HELD_OUT_SEED)
    splits = {"fp16": SplitCamera(back.path.parent, "triton"), "int8": SplitCamera(int8_path.parent, "triton")}
    result = validate(model, splits, {"held-out": held_out})
    final = {r[1]: r for r in result.rows if r[2] == "vtransform (final)"}
    rows.append(
        (
            "split (fp16 graph → Triton → fp16 graph) vs PyTorch, final BEV (chapter 07)",
            f"rel. error {float(final['fp16'][5]):.2g}, SQNR {float(final['fp16'][7]):.0f} dB",
        )
    )
    rows.append(
        (
            "split (int8 Q/DQ graph) vs fp32 PyTorch, final BEV (chapter 07)",
            f"cosine {float(final['int8'][6]):.3f}, SQNR {float(final['int8'][7]):.1f} dB",
        )
    )
    lift = oracle_lift(held_out, bevnb.plan_bev_pool(held_out), backend="torch")
    seen = lift.share_inside[lift.seen_pixels > 0]
    rows.append(
        (
            "oracle lift, held-out scene (chapter 07)",
            f"at least {100 * float(seen.min()):.1f} % of every seen box's lifted mass inside its footprint "
            f"(+{lift.margin:g} m)",
        )
    )

    from bevnb import quant_modelopt as qm

    mo = qm.quantize_camera_modelopt(bevnb.build_camera_model(TRAINED_WEIGHTS))
    mo_seconds = qm.calibrate_modelopt(mo, scenes, "max")
    mo_files = bevnb.export_camera(mo, build_dir("readme", "int8-modelopt"), "int8", verbose=False)
    diff = toolchains.placement_diff(
        graphs.load(int8_path), graphs.load(mo_files["camera.backbone.onnx"].path), ("pq", "mo")
    )
    rows.append(
        (
            f"int8 backbone, ModelOpt {version('nvidia-modelopt')} vs pytorch-quantization "
            f"{version('pytorch-quantization')} (chapter 10)",
            f"{'the same' if diff.same else 'NOT the same'} quantized tensors and scale sharing; "
            f"{diff.counts['pq']['QuantizeLinear nodes']} vs {diff.counts['mo']['QuantizeLinear nodes']} "
            "QuantizeLinear",
        )
    )
    accuracy = toolchains.int8_accuracy(
        model,
        {"pytorch-quantization, MSE": int8_path, "ModelOpt, max": mo_files["camera.backbone.onnx"].path},
        held_out,
    )
    rows.append(
        (
            "int8 vs fp32, held-out scene, ONNX Runtime (feature / depth weights / pooled BEV) (chapter 10)",
            "; ".join(f"{r[0]}: {' / '.join(f'{float(v):.1f}' for v in r[2::2])} dB" for r in accuracy.rows),
        )
    )
    rows.append(
        (
            f"calibration ({len(scenes)} scenes) / int8 export + onnxsim (chapter 10)",
            f"pytorch-quantization {pq_seconds:.1f} s / {int8_files['camera.backbone.onnx'].seconds:.1f} s; "
            f"ModelOpt, max {mo_seconds:.1f} s / {mo_files['camera.backbone.onnx'].seconds:.1f} s",
        )
    )

    traced = bevnb.export_camera(pq, build_dir("readme", "traced"), "int8", simplifier=None, verbose=False)
    results = toolchains.compare_simplifiers(
        {"int8": traced["camera.backbone.onnx"].path}, quant.backbone_inputs(held_out)
    )
    rows.append(
        (
            f"onnxsim {version('onnxsim')} vs onnxslim {version('onnxslim')}, int8 backbone (chapter 11)",
            "; ".join(
                f"{r.simplifier}: {'keeps' if r.kept_quantized else 'CHANGES'} the quantized tensors, "
                f"ORT max rel. Δ {r.parity:.2g}, {r.seconds:.2f} s"
                for r in results
            ),
        )
    )

    analysis = sensitivity.analyse(pq, held_out, cameras=(0,), progress=False)
    ranking = analysis.ranking()
    gains = ", ".join(
        f"{u.name} {analysis.sqnr[u.name]['bev'] - analysis.baseline['bev']:+.2f} dB" for u in ranking[:5]
    )
    rows.append(("sensitivity, front camera (pooled-BEV gain, one unit in float) (chapter 12)", gains))
    gain = 3.0  # chapter 12's TARGET_GAIN_DB
    chosen, path = analysis.shortest_float_set(analysis.baseline["bev"] + gain)
    pairs = sum(u.qdq_pairs for u in analysis.units)
    rows.append(
        (
            f"float set for {gain:+g} dB over all int8, front camera (chapter 12)",
            f"{len(chosen)} units ({analysis.baseline['bev']:.1f} → {path[-1]:.1f} dB), "
            f"{pairs - sum(u.qdq_pairs for u in chosen)} of {pairs} Q/DQ pairs left",
        )
    )

    rig = load_rig(FIVE_CAMERA_RIG_PATH)
    rig_sample, seconds = _timed(bevnb.make_sample, "synthetic", seed=1000, rig=rig)
    N, (iH, iW) = rig.num_cameras, rig.image_size
    rows.append(
        (
            "synthetic scene rendering, five-camera rig (chapter 08)",
            f"{seconds:.1f} s for {N} × {iW}×{iH} pixels ({1e6 * seconds / (N * iH * iW):.2f} µs per pixel)",
        )
    )
    rig_plan = bevnb.plan_bev_pool(rig_sample, rig.config)
    s = rig_plan.summary()
    X, Y, Z = rig.config.grid_size
    rows.append(
        (
            "five-camera rig: plan (chapter 08)",
            f"{s['kept points']:,} of {s['candidate points']:,} frustum points kept, {s['cells hit']:,} of "
            f"{X * Y * Z:,} cells ({X}×{Y}) hit, longest interval {int(s['max points/cell']):,} points",
        )
    )
    rig_model = bevnb.build_camera_model(TRAINED_WEIGHTS, config=rig.config)
    rig_dir = ensure_exported("fp16", config=rig.config, verbose=False)
    rig_result = validate(
        rig_model, {"fp16": SplitCamera(rig_dir, "auto", config=rig.config)}, {"synthetic-1000": rig_sample}
    )
    fin = next(r for r in rig_result.rows if r[2] == "vtransform (final)")
    rows.append(
        (
            f"five-camera rig: split (fp16 graph → bev_pool → fp16 graph) vs PyTorch, final BEV `{fin[3]}` "
            "(chapter 08)",
            f"rel. error {float(fin[5]):.2g}, SQNR {float(fin[7]):.0f} dB",
        )
    )
    margin = footprint_margin(rig.config)
    shares = []
    for seed in range(3):
        scene = rig_sample if seed == 0 else bevnb.make_sample("synthetic", seed=seed, rig=rig)
        lifted = oracle_lift(scene, bevnb.plan_bev_pool(scene, rig.config), "torch", config=rig.config, margin=margin)
        keep = (lifted.seen_pixels > 0) & lifted.in_grid
        shares.append(float(lifted.share_inside[keep].min()))
    rows.append(
        (
            "five-camera rig: oracle lift, scenes of seeds 1000, 1 and 2 (chapter 08)",
            f"at least {100 * min(shares):.1f} % of every seen box's mass inside its footprint (+{margin:.2f} m)",
        )
    )

    seeds = range(quant.HELD_OUT_SEED, quant.HELD_OUT_SEED + 20)
    evaluation, seconds = _timed(evaluate_detector, trained_detector(), seeds, progress=False)
    for name, m in evaluation.metrics.classes.items():
        rows.append(
            (
                f"detector, fp32, {name}, 20 held-out scenes (chapter 09)",
                f"mAP {m.mean_ap:.3f} (AP {' / '.join(f'{v:.3f}' for v in m.ap.values())} at "
                f"{' / '.join(f'{t:g}' for t in m.ap)} m); ATE {m.ate:.3f} m, ASE {m.ase:.3f}, AOE {m.aoe:.3f} rad",
            )
        )
    rows.append(
        (
            "depth: most likely bin within one bin of the truth, 20 held-out scenes (chapter 09)",
            f"{100 * evaluation.depth.share('lidar in patch'):.1f} % where a lidar point falls, "
            f"{100 * evaluation.depth.share('no lidar in patch'):.1f} % where none does; {seconds:.0f} s for 20 scenes",
        )
    )

    head_dir = build_dir("readme", "head")
    export_head(trained_detector().head, head_dir, verbose=False)
    zeros = failures.calibrated_on_export_sample(bevnb.build_camera_model(TRAINED_WEIGHTS), default_rig())
    bevnb.export_camera(zeros, build_dir("readme", "int8-zeros"), "int8", verbose=False)
    fp16_dir, mo_dir = files["camera.backbone.onnx"].path.parent, mo_files["camera.backbone.onnx"].path.parent
    sides = [
        Graphs(fp16_dir, half=True, head_dir=head_dir, label="fp16 numerics"),
        Graphs(int8_path.parent, head_dir=head_dir, label="int8, pytorch-quantization (MSE)"),
        Graphs(mo_dir, head_dir=head_dir, label="int8, ModelOpt (max)"),
        Graphs(
            build_dir("readme", "int8-zeros"), head_dir=head_dir, label="int8 calibrated on the all-zero export sample"
        ),
    ]
    scenes = range(quant.HELD_OUT_SEED, quant.HELD_OUT_SEED + 4)
    diagnoses = diagnose_many(Graphs(fp16_dir, head_dir=head_dir, label="fp32"), sides, scenes, progress=False)
    fp32 = diagnoses[0].scores["fp32"]
    rows.append(
        (
            "fp32 graphs in ONNX Runtime → boxes, 4 held-out scenes (chapter 13)",
            f"{sum(fp32.predicted.values())} boxes, mAP {fp32.mean_ap:.3f}",
        )
    )
    for d in diagnoses:
        found = d.scores[d.labels[1]]
        rows.append(
            (
                f"{d.labels[1]} vs fp32, by stage and by boxes, 4 held-out scenes (chapter 13)",
                f"{sum(found.predicted.values())} boxes, mAP {found.mean_ap:.3f}; lowest SQNR "
                f"{d.lowest_sqnr_db:.1f} dB; most likely depth bin unchanged on "
                f"{100 * d.depth_bin_agreement:.2f} % of the pixels; "
                + (f"first stage below {d.min_sqnr_db:g} dB: {d.broken.stage}" if d.broken else "every stage agrees"),
            )
        )
    scaled = failures.features_scaled(bevnb.build_camera_model(TRAINED_WEIGHTS), 512.0)
    bevnb.export_camera(scaled, build_dir("readme", "fp16-x512"), "fp16", verbose=False)
    overflow = _self_against_half(build_dir("readme", "fp16-x512"), head_dir, "features ×512", scenes)
    factor = failures.fp16_rescale(overflow.stage("bev_pool").peak)
    bevnb.export_camera(
        failures.features_scaled(scaled, factor), build_dir("readme", "fp16-rescaled"), "fp16", verbose=False
    )
    fixed = _self_against_half(build_dir("readme", "fp16-rescaled"), head_dir, f"rescaled ×{factor:g}", scenes)
    for d in (overflow, fixed):
        found = d.scores[d.labels[1]]
        rows.append(
            (
                f"{d.labels[1]} vs its fp32 graphs, 4 held-out scenes (chapter 13)",
                f"{sum(found.predicted.values())} boxes, mAP {found.mean_ap:.3f}; "
                + (
                    f"first stage that breaks: {d.broken.stage} ({d.broken.nonfinite} non-finite values, fp32 peak "
                    f"{d.broken.peak:,.0f})"
                    if d.broken
                    else f"every stage agrees (lowest SQNR {d.lowest_sqnr_db:.1f} dB)"
                ),
            )
        )
    del torch
    return rows


def _self_against_half(folder: Path, head_dir: Path, what: str, scenes: range):
    """One float export against itself with fp16 numerics (``bevnb diagnose DIR DIR --half test``)."""
    from bevnb.diagnosis import Graphs, diagnose

    reference = Graphs(folder, head_dir=head_dir, label=f"fp32, {what}")
    return diagnose(reference, Graphs(folder, True, f"fp16 numerics, {what}", head_dir), scenes, progress=False)


def run_info() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
        if line.startswith("model name")
    ]
    cpu = names[0] if names else cpu
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit.stdout.strip() or "unknown",
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "versions": {p: version(p) for p in ("torch", "onnxruntime", "pytorch-quantization", "nvidia-modelopt")},
    }


def markdown(rows: list[Row], info: dict) -> str:
    versions = ", ".join(f"{p} {v}" for p, v in info["versions"].items())
    lines = [
        f"Run of `python benchmarks/readme_numbers.py` on {info['date']}, commit `{info['commit']}`, {info['cpu']} "
        f"({versions}); no GPU. Rerun it to refresh this table.",
        "",
        "| what | number |",
        "|---|---|",
        *(f"| {what} | {number} |" for what, number in rows),
    ]
    return "\n".join(lines)


def update_readme(table: str, readme: Path = README) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no {START} … {END} block to replace")
    readme.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-readme", action="store_true", help="only print and save the JSON")
    args = parser.parse_args(argv)
    info = run_info()
    rows, seconds = _timed(measure)
    info["seconds"] = round(seconds, 1)
    table = markdown(rows, info)
    print(table)
    out = ROOT / "benchmarks" / "results" / "readme" / "cpu.json"  # beside, not among, the bev_pool results
    out.write_text(json.dumps({"run": info, "rows": rows}, indent=1, ensure_ascii=False) + "\n")
    if not args.no_readme:
        update_readme(table)
    print(f"{seconds:.0f} s; wrote {out.relative_to(ROOT)}" + ("" if args.no_readme else " and the README's table"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
