"""The GPU check, end to end, as one command (prints a Markdown table; writes it and the JSON to --out).

    bash bench/gpu_smoke.sh                      # on the GPU machine (installs carried wheels first)
    .venv/bin/python bench/gpu_smoke.py --cpu    # here: the same steps, shrunk, on the CPU

Steps (each timed; a failing step is recorded and the next one still runs):
  1. environment: torch, CUDA device, bf16, flash-attn, bitsandbytes, liger;
  2. `platypus run params/gpu-smoke.yaml --force`: every stage on a random-initialised Llama-shaped
     model (bf16, sdpa or flash-attention, padding-free batches of exactly 16 examples, merges checked,
     lm-eval with batch_size auto); the table takes stage 03's speed and batch plan, 04's checks
     and 05's batch size from the run's own files;
  3. 4-bit and 8-bit loading of that model with bitsandbytes (when installed): a LoRA forward and
     backward each;
  4. stage 05 again with evaluate.backend: vllm (lm-eval's vLLM model, prefix caching) when vllm is
     installed, its wall time beside the hf backend's;
  5. bench/bench_finetune.py on 7B- and 13B-shaped models (authors' micro-batch 1, padding-free, packed).
The profile step reports the objective stage 03 trained (finetune.loss_normalization: examples, the
authors' per-example mean) and the examples each optimizer step held, counted in the batches.
--cpu runs 1, 2 (stages 01-04, two optimizer steps, float32) and 5 (tiny shape), to check the
script itself where no GPU is.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "params" / "gpu-smoke.yaml"
CPU_SETTINGS = [
    "finetune.sft.max_steps=2",
    "finetune.cutoff_len=256",
    "finetune.sft.per_device_train_batch_size=8",
    "finetune.partner_adapter.sft.max_steps=1",
    "models.torch_dtype=float32",
    "evaluate.device=cpu",
]


def step(results: list, name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        detail = fn()
        results.append({"step": name, "ok": True, "seconds": round(time.perf_counter() - t0, 1), **(detail or {})})
    except Exception as exc:  # noqa: BLE001 - the table records every step's outcome
        results.append(
            {
                "step": name,
                "ok": False,
                "seconds": round(time.perf_counter() - t0, 1),
                "error": f"{type(exc).__name__}: {exc}"[:400],
            }
        )


def environment() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        **{pkg: importlib.util.find_spec(pkg) is not None for pkg in ("flash_attn", "bitsandbytes", "liger_kernel")},
    }


UPSTREAM_STAGES = ("01_curate", "02_decontaminate")


def run_profile(runs: Path, cpu: bool, upstream: Path | None = None) -> dict:
    """`platypus run` of the smoke profile. With `upstream` (a runs folder of the same profile, as
    bench/gpu_prepare.sh makes on a CPU machine), stages 01-02 are copied from it and only 03 on run:
    a GPU machine then needs neither the embedding model nor the embedded LLM (too large to carry)."""
    sets = [f"paths.runs_dir={runs / 'runs'}", f"paths.reports_dir={runs / 'reports'}"]
    cmd = [sys.executable, "-m", "platypus_utils", "run", str(PROFILE), "--force"]
    stages = ["01", "02", "03", "04", "05", "06"]
    if upstream is not None:
        for name in UPSTREAM_STAGES:
            source = upstream / "gpu-smoke" / name
            if not (source / "manifest.json").is_file():
                raise FileNotFoundError(f"{source}: no finished stage to start from (run bench/gpu_prepare.sh)")
            shutil.copytree(source, runs / "runs" / "gpu-smoke" / name, dirs_exist_ok=True)
        stages = stages[2:]
    if cpu:
        stages = [s for s in stages if s <= "04"]
        sets += CPU_SETTINGS
    if stages != ["01", "02", "03", "04", "05", "06"]:
        for stage in stages:
            cmd += ["--only", stage]
    for item in sets:
        cmd += ["--set", item]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-1500:]}")
    return profile_results(runs / "runs" / "gpu-smoke")


def profile_results(run_dir: Path) -> dict:
    ft = json.loads((run_dir / "03_finetune" / "metrics.json").read_text())
    out = {
        k: ft.get(k)
        for k in (
            "device",
            "dtype",
            "attn_implementation",
            "tokens_per_s",
            "peak_gpu_mem_mb",
            "examples_per_step",
            "batch_unit",
            "steps",
            "eval_loss_before",
            "eval_loss_after",
            "loss_normalization",
        )
    }
    counted = ft.get("examples_per_step_counted") or []
    out["examples_counted_per_step"] = f"{min(counted)}-{max(counted)}" if counted else None
    out["padding_free_isolation"] = (ft.get("packing_isolation") or {}).get("max_rel_diff")
    merge = json.loads((run_dir / "04_merge" / "merge_report.json").read_text())
    out["merge_status"] = {
        v: m.get("status", "verified" if m.get("verified") else "?") for v, m in merge["models"].items()
    }
    report = run_dir / "05_evaluate" / "evaluate_report.json"
    if report.is_file():
        ev = json.loads(report.read_text())
        out["variants_evaluated"] = sorted(v for v, r in ev["variants"].items() if r["status"] == "ok")
        out["evaluate_s"] = _stage_seconds(run_dir / "05_evaluate")
    return out


def keep_reports(run_dir: Path, out: Path) -> None:
    """The stages' own reports beside the table, flat (a device call returns files at most two folders down)."""
    for rel in ("03_finetune/metrics.json", "04_merge/merge_report.json", "05_evaluate/evaluate_report.json"):
        if (run_dir / rel).is_file():
            shutil.copyfile(run_dir / rel, out / rel.replace("/", "__"))


def _stage_seconds(stage_dir: Path):
    manifest = stage_dir / "manifest.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("timings", {}).get("wall_s")


def vllm_backend(runs: Path) -> dict:
    """Stage 05 once more on the same run, with lm-eval's vLLM model; its wall time beside hf's."""
    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        return {"skipped": "vllm is not installed here (its wheels exceed what a device call carries)"}
    sets = [f"paths.runs_dir={runs / 'runs'}", f"paths.reports_dir={runs / 'reports'}", "evaluate.backend=vllm"]
    cmd = [sys.executable, "-m", "platypus_utils", "run", str(PROFILE), "--only", "05", "--force"]
    for item in sets:
        cmd += ["--set", item]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-1500:]}")
    return {"evaluate_s_vllm": _stage_seconds(runs / "runs" / "gpu-smoke" / "05_evaluate")}


def quantized_loading() -> dict:
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        return {"skipped": "needs bitsandbytes and a CUDA GPU"}
    from peft import get_peft_model

    from platypus_utils.config import load_profile
    from platypus_utils.finetune.distributed import load_base_model
    from platypus_utils.finetune.trainer import build_lora_config
    from platypus_utils.models import resolve_model

    profile = load_profile(PROFILE)
    path = resolve_model(profile.models.base, profile.cache_dir())
    out = {}
    for flag in ("load_in_4bit", "load_in_8bit"):
        ft = profile.finetune.model_copy(update={flag: True})
        torch.cuda.reset_peak_memory_stats()
        model = load_base_model(profile, path, "cuda", torch.bfloat16, ft)
        model = get_peft_model(model, build_lora_config(ft))
        ids = torch.randint(0, 1000, (2, 256), device="cuda")
        model(input_ids=ids, labels=ids).loss.backward()
        out[flag] = f"ok, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        del model
        torch.cuda.empty_cache()
    return out


def bench(out_dir: Path, cpu: bool) -> dict:
    shapes = ["tiny"] if cpu else ["7b", "13b"]
    target = out_dir / "bench_finetune.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "bench_finetune.py"),
        "--shape",
        *shapes,
        "--steps",
        "2" if cpu else "4",
        "--warmup",
        "1",
        "--configs",
        "authors",
        "padfree",
        "packed",
        "--json",
        str(target),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-1500:]}")
    rows = json.loads(target.read_text())["rows"]
    return {
        "rows": [
            {k: r.get(k) for k in ("shape", "config", "tokens_per_s", "mfu_6n", "peak_mem_gb", "examples_per_step")}
            for r in rows
        ]
    }


def markdown(results: list) -> str:
    lines = ["| step | ok | s | detail |", "|---|---|---:|---|"]
    for r in results:
        detail = r.get("error") or ", ".join(
            f"{k}={v}" for k, v in r.items() if k not in ("step", "ok", "seconds", "rows")
        )
        lines.append(f"| {r['step']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | {detail} |")
    for r in results:
        for row in r.get("rows", []):
            lines.append(
                f"| bench {row['shape']} {row['config']} | yes | | tokens/s {row['tokens_per_s']}, "
                f"MFU {row['mfu_6n']}, peak {row.get('peak_mem_gb')} GiB, {row['examples_per_step']} ex/step |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the shrunk CPU run (checks the script, not the GPU)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "reports" / "gpu-smoke"))
    parser.add_argument("--upstream", type=Path, help="runs folder holding gpu-smoke's stages 01-02 (gpu_prepare.sh)")
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --cpu to check the script, or on the GPU machine", file=sys.stderr)
        return 3
    results: list = []

    def record(name: str, fn) -> None:  # the table is rewritten after each step: a run cut short keeps it
        step(results, name, fn)
        (out / "gpu_smoke.md").write_text(markdown(results) + "\n")
        (out / "gpu_smoke.json").write_text(json.dumps(results, indent=2, default=str))
        print(markdown(results[-1:]), flush=True)

    record("environment", environment)
    record("gpu-smoke profile", lambda: run_profile(work, args.cpu, args.upstream))
    keep_reports(work / "runs" / "gpu-smoke", out)
    record("bench_finetune", lambda: bench(out, args.cpu))
    if not args.cpu:
        record("4-bit / 8-bit loading", quantized_loading)
        record("vllm backend", lambda: vllm_backend(work))
    print(markdown(results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
