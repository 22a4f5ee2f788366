"""bench_encoder's summary: the ratios its targets are stated in, and the table RESULTS.md shows."""

from __future__ import annotations

from typing import Any


def ratios(result: dict, gpus: int) -> dict[str, Any]:
    ceiling = result["model_ceiling"]
    best_batch = max(ceiling, key=ceiling.get)
    best = {label: max(v.values()) for label, v in result["pipeline_fps"].items()}
    out: dict[str, Any] = {"best_batch": best_batch, "gpus": gpus}
    if "torch" in best:
        out["pipeline / model ceiling"] = best["torch"] / ceiling[best_batch]
        out["pipeline / seed baseline"] = best["torch"] / result["seed_baseline_fps"]
    # Issue 16's targets: against PyTorch eager's bare model at batch 32, and the seed's loop.
    for precision in ("fp32", "int8"):
        runs = {k: v for k, v in best.items() if k.endswith(precision) and k != "torch"}
        if runs:
            label = max(runs, key=runs.__getitem__)
            out[f"pipeline, best {precision} runtime ({label}) / torch ceiling batch 32"] = runs[label] / ceiling[32]
            out[f"pipeline, best {precision} runtime ({label}) / seed baseline"] = (
                runs[label] / result["seed_baseline_fps"]
            )
        # The same at worker level (no sockets, no other processes): what stands when the pipeline cannot run.
        worker = {k: v for k, v in result.get("runtimes", {}).get("worker", {}).items() if k.endswith(precision)}
        worker.pop("torch fp32", None)
        if worker:
            label = max(worker, key=worker.__getitem__)
            out[f"worker level, best {precision} runtime ({label}) / torch ceiling batch 32"] = (
                worker[label] / ceiling[32]
            )
    return out


def print_table(result: dict) -> None:
    print("\n  | measure | value |\n  |---|---|")
    for bs, v in result["model_ceiling"].items():
        print(f"  | model ceiling (torch), batch {bs} | {v:.1f} images/s |")
    rt = result.get("runtimes", {})
    for label, rates in rt.get("bare", {}).items():
        print(f"  | bare model, {label}, batch 8 / 32 | {rates[8]:.1f} / {rates[32]:.1f} images/s |")
    for label, v in rt.get("start_s", {}).items():
        print(f"  | worker start (load_encoder), {label}, export cached | {v:.1f} s |")
    for bs, modes in rt.get("openvino_modes", {}).items():
        for mode, v in modes.items():
            print(f"  | openvino fp32, {mode}, batch {bs} | {v:.1f} images/s |")
    for label, v in rt.get("worker", {}).items():
        print(f"  | worker level (decode + model thread, batch 8), {label} | {v:.1f} frames/s |")
    for label, v in rt.get("cosine_to_torch_fp32", {}).items():
        print(f"  | cosine to torch fp32, {label} (min over 32 frames) | {v:.6f} |")
    for label, f in rt.get("int8", {}).items():
        print(
            f"  | {label} vs fp32 on {f['frames']} camera frames: cosine min / mean; top-10 overlap | "
            f"{f['cosine_min']:.4f} / {f['cosine_mean']:.5f}; {f['top10_overlap']:.2f} |"
        )
    print(f"  | seed-style baseline | {result['seed_baseline_fps']:.1f} frames/s |")
    for label, runs in result["pipeline_fps"].items():
        for k, v in runs.items():
            print(f"  | pipeline, {label}, {k}, lossless | {v:.1f} frames/s |")
    if r := result.get("realtime_30fps"):
        print(
            f"  | real time 30 fps, latency p50/p95/p99 | {r['p50_ms']:.0f} / {r['p95_ms']:.0f} / "
            f"{r['p99_ms']:.0f} ms, {r['dropped']}/{r['published']} dropped |"
        )
    for size, row in result["decode_preprocess"].items():
        print(
            f"  | decode+preprocess {size} (fast / full / open_clip) | {row['fast_ms']:.2f} / "
            f"{row['full_decode_ms']:.2f} / {row['open_clip_ms']:.2f} ms |"
        )
    for k, v in result["ratios"].items():
        if isinstance(v, float):
            print(f"  | {k} | {v:.2f} |")
