"""Every CUDA path of the engine, run once on a real GPU, with the hardware's limits measured beside our figures.

    .venv/bin/python bench/gpu_check.py                 # on a GPU machine: a ~1.5 B Llama in bf16, <= 5 min on an H100/H200
    .venv/bin/python bench/gpu_check.py --device cpu    # the same steps at small size on the CPU (tests/test_gpu_check.py)

Steps, in order (each one row, or a few, of the one table printed at the end):
1. limits: device copy, host-to-device and device-to-host bandwidth (pinned), measured now;
2. build: a Llama from a config, directly on the device in bf16 (no download), saved with save_pretrained;
3. load: ModelManager with `--device auto` (device_map="auto" over the visible GPUs; CPU without CUDA);
4. scan: SafetyMonitor.check_model_health under `torch.cuda.set_sync_debug_mode("warn")`, counting the
   host syncs it makes (goal: one per device for a clean model, two per device once something is
   non-finite); on the CPU the device-to-host reads are counted instead (tests/host_transfers.py);
5. checkpoints: first save, incremental save (one layer changed), rollback from the pinned host copy
   (goal: at least half the host-to-device bandwidth), a verified restore from disk (bit-exact);
6. a headless engine loading the saved model with `--device auto`: its GPU gauges, an emergency stop in
   the middle of forward passes (latency until the experiment unwound, and until the GPU is idle), a
   real out-of-memory (an experiment allocates 1 GiB blocks until the allocator fails) and the engine's
   recovery: memory given back before the retry, and the engine alive afterwards.

Exit status 0 when every row passes, 1 otherwise. Goals about speed are enforced on CUDA only: the
CPU run proves that every step works, not how fast a small model goes on a shared machine.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GiB = 1 << 30
GOAL_ROLLBACK = 0.5  # rollback bandwidth / host-to-device bandwidth, at least
GOAL_STOP_MS = 100.0  # emergency stop latency, at most
OOM_SLACK = 256 << 20  # bytes still allocated at the retry beyond what was before the failed attempt

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"


# -- the engine calls this check makes, in one place (point them at new functions when they land) -----------
def load_model(model_dir: Path, device: str, dtype: str):
    from engine.model_manager import ModelManager

    manager = ModelManager(str(model_dir), device=device, dtype=dtype)
    return manager, manager.load()


def safety_monitor(directory: Path):
    from engine.safety_monitor import SafetyMonitor

    return SafetyMonitor(directory)


def checkpoint_manager(model, directory: Path, *, held: bool = True):
    from engine.checkpointing import CheckpointManager

    return CheckpointManager(model, directory, memory_snapshot=held)


def snapshot_page_locked(manager) -> bool:
    """Whether the checkpoint manager's host copy is pinned (page-locked) memory."""
    held = manager._snapshot.by_hash.values() if manager._snapshot else ()  # noqa: SLF001 - no public reading yet
    return any(buf.is_pinned() for buf in held)


def engine_config(model_dir: Path, run_dir: Path, device: str, dtype: str, batch: int, seq: int):
    from engine.runtime import EngineConfig

    return EngineConfig(model=str(model_dir), experiment=None, run_dir=run_dir, device=device, dtype=dtype,
                        forensic_checkpoints=False, evaluate_every=0, auto_checkpoint_every=0, stop_grace=30.0,
                        health_interval=0.25, experiment_options={"batch": batch, "seq": seq})
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    ours: str
    limit: str = ""
    ratio: str = ""
    goal: str = ""
    ok: bool | None = None  # None: a figure with no goal

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: ""}[self.ok]


class Check:
    """The rows so far; a step that raises becomes a FAIL row with the error and the run goes on."""

    def __init__(self, device: torch.device, enforce_speed: bool):
        self.device = device
        self.enforce_speed = enforce_speed
        self.rows: list[Row] = []

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def speed_goal(self, met: bool) -> bool | None:
        return met if self.enforce_speed else None

    def step(self, name: str, fn, *args):
        started = time.perf_counter()
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - a failed step is a row, the others still run
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.add(name, f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}", ok=False)
            traceback.print_exc()  # where it broke, for the first run on a new machine
            return None
        print(f"  {name}: {time.perf_counter() - started:.1f} s", flush=True)
        return result

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn, repeat: int = 3) -> float:
        """Best of `repeat` wall times of fn() (device work included)."""
        best = float("inf")
        for _ in range(repeat):
            self.sync()
            started = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - started)
        return best


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def measure_limits(check: Check, nbytes: int) -> dict[str, float]:
    """Device copy, H2D and D2H bandwidth (GB/s) of `nbytes` buffers; on the CPU all three are host memcpy."""
    device, cuda = check.device, check.device.type == "cuda"
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=cuda).fill_(2)
    limits = {
        "copy": gbps(nbytes, check.timed(lambda: dst.copy_(src))),
        "h2d": gbps(nbytes, check.timed(lambda: dst.copy_(host, non_blocking=cuda))),
        "d2h": gbps(nbytes, check.timed(lambda: host.copy_(src, non_blocking=cuda))),
    }
    pinned = "pinned" if cuda else "memcpy on the CPU"
    for key, label in (("copy", "device copy (limit)"), ("h2d", f"host to device, {pinned} (limit)"),
                       ("d2h", f"device to host, {pinned} (limit)")):
        check.add(label, f"{limits[key]:.1f} GB/s")
    del src, dst, host
    return limits


def build_and_save(check: Check, model_dir: Path, small: bool, dtype: torch.dtype) -> int:
    """A Llama built from a config directly on the device (random weights), saved; returns its bytes."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from engine.transformers_progress import quiet_transformers_progress

    shape = (dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256) if small else
             dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=20,
                  num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048))
    config = LlamaConfig(tie_word_embeddings=False, **shape)
    started = time.perf_counter()
    with torch.device(check.device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    check.sync()
    built = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(p.nbytes for p in model.parameters())
    with quiet_transformers_progress():
        model.save_pretrained(model_dir)
    check.add("build on device from config", f"{params / 1e6:,.1f} M params, {nbytes / 1e9:.3f} GB {str(dtype)[6:]}",
              goal=f"{built:.1f} s", ok=all(p.device.type == check.device.type for p in model.parameters()))
    del model
    gc.collect()
    return nbytes


def check_load(check: Check, model_dir: Path, device_arg: str, dtype: str, nbytes: int):
    from engine import placement

    started = time.perf_counter()
    manager, model = load_model(model_dir, device_arg, dtype)
    seconds = time.perf_counter() - started
    devices = placement.model_devices(model)
    want = check.device.type
    check.add(f"load, --device {device_arg}", f"{seconds:.1f} s, {gbps(nbytes, seconds):.2f} GB/s",
              goal=f"on {want}: {placement.describe(model)}", ok=all(d.type == want for d in devices))
    return manager, model, devices


def count_syncs(check: Check, fn) -> tuple[int, int]:
    """(host syncs torch reports under set_sync_debug_mode, or -1 on the CPU; device-to-host reads counted)."""
    from tests.host_transfers import HostTransfers

    cuda = check.device.type == "cuda"
    with warnings.catch_warnings(record=True) as caught, HostTransfers() as reads:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught) if cuda else -1
    return syncs, reads.count


def check_scan(check: Check, model, devices, limits, directory: Path) -> None:
    health_check = safety_monitor(directory).check_model_health
    cuda_devices = [d for d in devices if d.type == "cuda"] or devices
    n = len(cuda_devices)
    health_check(model)  # warm-up
    nbytes = sum(p.nbytes for p in model.parameters())
    seconds = check.timed(lambda: health_check(model), repeat=5)
    check.add("health scan (clean), best of 5", f"{seconds * 1000:.1f} ms, {gbps(nbytes, seconds):.1f} GB/s read",
              f"{limits['copy']:.1f} GB/s copy", f"{gbps(nbytes, seconds) / limits['copy']:.2f}")
    for label, allowed in (("clean", 1), ("damaged", 2)):
        syncs, reads = count_syncs(check, lambda: health_check(model))
        seen = syncs if syncs >= 0 else reads
        what = "host syncs (set_sync_debug_mode)" if syncs >= 0 else "device-to-host reads"
        check.add(f"scan {label}: {what}", f"{seen} ({reads} reads)", goal=f"{allowed} per device x {n}",
                  ok=seen == allowed * n)
        if label == "clean":  # damage one element on every device, to be restored below
            damaged = _damage_each_device(model)
    with torch.no_grad():
        for p, index, value in damaged:
            p.view(-1)[index] = value


def _damage_each_device(model):
    """A NaN in the first parameter of each device; returns what to put back."""
    restore, seen = [], set()
    with torch.no_grad():
        for p in model.parameters():
            if p.device not in seen and p.is_floating_point():
                seen.add(p.device)
                restore.append((p, 0, p.view(-1)[0].clone()))
                p.view(-1)[0] = float("nan")
    return restore


def host_reference(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def same_as(model, reference) -> bool:
    return all(torch.equal(v.detach().cpu().view(torch.uint8), reference[k].view(torch.uint8))
               for k, v in model.state_dict().items())


def check_checkpoints(check: Check, model, directory: Path, limits) -> None:
    reference = host_reference(model)
    nbytes = sum(t.nbytes for t in reference.values())
    manager = checkpoint_manager(model, directory)
    started = time.perf_counter()
    first = manager.save_checkpoint({"purpose": "gpu_check"})
    seconds = time.perf_counter() - started
    check.add("first save", f"{seconds:.2f} s, {gbps(nbytes, seconds):.2f} GB/s")
    layer = model.model.layers[0]
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(1.5)
    changed = sum(p.nbytes for p in layer.parameters())
    started = time.perf_counter()
    manager.save_checkpoint({"purpose": "gpu_check incremental"})
    check.add("incremental save (one layer changed)", f"{time.perf_counter() - started:.2f} s",
              goal=f"{changed / 1e6:.2f} MB changed")

    manager.hold_in_memory(first)
    pinned = snapshot_page_locked(manager)
    seconds = check.timed(lambda: _must(manager.restore_checkpoint(first), manager), repeat=3)
    ratio = gbps(nbytes, seconds) / limits["h2d"]
    check.add(f"rollback from host memory ({'pinned' if pinned else 'pageable'})",
              f"{seconds:.3f} s, {gbps(nbytes, seconds):.1f} GB/s", f"{limits['h2d']:.1f} GB/s H2D", f"{ratio:.2f}",
              f">= {GOAL_ROLLBACK:.0%} of H2D", check.speed_goal(ratio >= GOAL_ROLLBACK))
    check.add("rollback bit-exact", "yes" if same_as(model, reference) else "NO", ok=same_as(model, reference))

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1)
    cold = checkpoint_manager(model, directory, held=False)
    started = time.perf_counter()
    _must(cold.restore_checkpoint(first), cold)
    seconds = time.perf_counter() - started
    exact = same_as(model, reference)
    check.add("disk restore, every tensor verified", f"{seconds:.2f} s, {gbps(nbytes, seconds):.2f} GB/s",
              goal="bit-exact", ok=exact)


def _must(ok: bool, manager) -> None:
    if not ok:
        raise RuntimeError(manager.last_error)


def check_engine(check: Check, model_dir: Path, run_dir: Path, device_arg: str, dtype: str, small: bool) -> None:
    from engine import placement
    from engine.commands import RunExperiment
    from engine.events import EngineState, HealthSnapshot, LogLine, RunOutcome
    from engine.runtime import Engine

    batch, seq = (2, 32) if small else (8, 512)
    engine = Engine(engine_config(model_dir, run_dir, device_arg, dtype, batch, seq))
    seen: list = []

    def wait(condition, what: str, timeout: float = 180.0):
        deadline = time.monotonic() + timeout
        while not condition():
            seen.extend(engine.drain_events())
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: engine state {engine.state}, error {engine.error}")
            time.sleep(0.002)

    def logged(prefix: str) -> list[str]:
        return [e.text for e in seen if isinstance(e, LogLine) and e.text.startswith(prefix)]

    def run(script: str) -> int:
        """Start an experiment; returns where its events begin in `seen`."""
        wait(lambda: engine.state == EngineState.IDLE, "idle before an experiment")
        since = len(seen)
        engine.submit(RunExperiment(path=str(EXPERIMENTS / script)))
        return since

    def outcome(since: int, what: str):
        wait(lambda: any(isinstance(e, RunOutcome) for e in seen[since:]), f"{what}'s outcome", 600.0)
        return [e for e in seen[since:] if isinstance(e, RunOutcome)][-1]

    def fresh_health(since: int):
        wait(lambda: any(isinstance(e, HealthSnapshot) for e in seen[since:]), "a health scan")
        return [e for e in seen[since:] if isinstance(e, HealthSnapshot)][-1]

    engine.start()
    try:
        wait(lambda: engine.state in (EngineState.IDLE, EngineState.ERROR), "engine start", 600.0)
        if engine.state == EngineState.ERROR:
            raise RuntimeError(f"engine failed to start: {engine.error}")
        core = engine.core
        cuda = [d for d in placement.model_devices(core.model) if d.type == "cuda"]
        names = [g.name for g in fresh_health(len(seen)).gauges if g.name.startswith("gpu")]
        want = [f"gpu{d.index}_mem" for d in cuda]
        check.add("engine gauges per GPU", " ".join(names) or "none (no GPU)", goal=" ".join(want) or "none",
                  ok=all(w in names for w in want) and (bool(cuda) or not names))

        latencies, drained = [], []
        for trial in range(5):
            since = run("forward_loop.py")
            wait(lambda: any(isinstance(e, LogLine) and e.text == "forwarding" for e in seen[since:]), "forwarding")
            time.sleep(0.05 + trial * 0.013)  # land at different points of a pass
            halted_before = core.halted_at
            started = time.perf_counter()
            engine.emergency_stop("gpu_check")
            wait(lambda: core.halted_at != halted_before, "the stop")
            latencies.append((core.halted_at - started) * 1000)
            check.sync()
            drained.append((time.perf_counter() - started) * 1000)
            outcome(since, "the stopped run")
        worst = max(latencies)
        check.add("emergency stop mid-forward (5), worst", f"{worst:.1f} ms (median {statistics.median(latencies):.1f})",
                  goal=f"<= {GOAL_STOP_MS:.0f} ms", ok=check.speed_goal(worst <= GOAL_STOP_MS))
        check.add("  ... until the device is idle, worst", f"{max(drained):.1f} ms")

        free_before = torch.cuda.mem_get_info(cuda[0])[0] if cuda else 0
        ended = outcome(run("allocate_until_oom.py"), "the out-of-memory run")
        if not (logged("oom_peak") and logged("oom_retry")):
            raise RuntimeError(f"no retry after the out-of-memory: outcome {ended.outcome} ({ended.detail}), "
                               f"engine {engine.state.value}")
        before = int(logged("oom_before")[0].split()[1])
        peak, blocks = (int(v) for v in logged("oom_peak")[0].split()[1::2])
        retry = int(logged("oom_retry")[0].split()[1])
        check.add("out of memory: allocated at the failure", f"{peak / GiB:.1f} GiB in {blocks} blocks",
                  goal="a real allocator failure", ok=blocks > 0)
        check.add("  ... allocated at the retry", f"{retry / GiB:.2f} GiB (before {before / GiB:.2f})",
                  goal=f"<= before + {OOM_SLACK >> 20} MiB", ok=retry <= before + OOM_SLACK)
        if cuda:
            free_after = torch.cuda.mem_get_info(cuda[0])[0]
            check.add("  ... device memory free after recovery", f"{free_after / GiB:.1f} GiB",
                      goal=f"~ before ({free_before / GiB:.1f} GiB)", ok=free_after >= free_before - 2 * OOM_SLACK)
        health = fresh_health(len(seen))
        check.add("  ... engine alive after it", f"{engine.state.value}, outcome {ended.outcome}, scan {health.status}",
                  goal="idle, finished", ok=engine.state == EngineState.IDLE and ended.outcome == "finished")
    finally:
        engine.shutdown()


def print_table(check: Check, title: str) -> None:
    widths = (42, 36, 18, 7, 26, 5)
    head = ("measure", "ours", "limit (this run)", "ratio", "goal", "")
    print(title)
    print("".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in check.rows:
        cells = (r.what, r.ours, r.limit, r.ratio, r.goal, r.verdict)
        print("".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default: every CUDA path, a ~1.5 B model) or cpu (the same steps, small)")
    parser.add_argument("--small", action="store_true", help="the small model on CUDA too (a quick smoke run)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: this torch ({torch.__version__}) sees no CUDA GPU; run with --device cpu", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    small = args.small or not cuda
    dtype, dtype_name = (torch.bfloat16, "bf16") if cuda else (torch.float32, "fp32")
    device_arg = "auto" if cuda else "cpu"
    check = Check(device, enforce_speed=cuda and not small)
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    title = (f"gpu_check on {where} ({torch.cuda.device_count() if cuda else 0} GPU(s) visible), torch "
             f"{torch.__version__}, {'small' if small else '~1.5 B'} Llama {dtype_name}")
    print(title, flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="redline-gpucheck-", dir=args.dir) as tmp:
        root = Path(tmp)
        limits = check.step("limits", measure_limits, check, (64 << 20) if small else GiB)
        nbytes = check.step("build", build_and_save, check, root / "model", small, dtype)
        loaded = check.step("load", check_load, check, root / "model", device_arg, dtype_name, nbytes or 1)
        if loaded and limits:
            manager, model, devices = loaded
            check.step("scan", check_scan, check, model, devices, limits, root / "alerts")
            check.step("checkpoints", check_checkpoints, check, model, root / "checkpoints", limits)
            del manager, model, loaded
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        check.step("engine", check_engine, check, root / "model", root / "run", device_arg, dtype_name, small)
    print()
    print_table(check, f"{title}; {time.perf_counter() - started:.0f} s in all")
    failed = [r.what for r in check.rows if r.ok is False]
    print(f"{len(failed)} failed: {', '.join(failed)}" if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
