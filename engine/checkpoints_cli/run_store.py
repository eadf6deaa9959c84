"""Which checkpoint store a command works on, opened how, and the failures that end a command.

`--run-dir DIR` names a run directory (its store is DIR/checkpoints) or a store itself (the
directory given to a CheckpointManager); without it, the engine's default run directory of the
demo model. Readers open the store read-only, so ls, show, verify, diff, export and gc's dry
run create and change nothing there (no lock file, no tmp/). Locking follows the store's rule: readers hold
its shared lock (a deletion, in any process, waits), gc and rm its exclusive lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from engine.checkpoints_cli.failures import EXIT_DAMAGED, CommandFailed, usage_error
from engine.store.errors import CheckpointCorrupted, CheckpointNotFound, InvalidCheckpointId
from engine.store.manifests import Manifest, check_id
from engine.store.store import CheckpointStore

def locate(run_dir: Path | None) -> Path:
    """The checkpoint store of `run_dir` (see the module docstring); exit 2 when there is none."""
    if run_dir is None:
        from engine.paths import DEMO_MODEL_NAME, default_run_dir

        run_dir = default_run_dir(DEMO_MODEL_NAME)
    run_dir = Path(run_dir).expanduser().absolute()
    for candidate in (run_dir / "checkpoints", run_dir):
        if (candidate / "manifests").is_dir():
            return candidate
    raise usage_error(f"no checkpoints in {run_dir}: neither it nor {run_dir / 'checkpoints'} holds a checkpoint "
                      "store (a manifests/ folder). Give --run-dir the directory `redline --run-dir` used, or "
                      "the checkpoint_dir of a CheckpointManager")


class InspectingStore(CheckpointStore):
    """The store without its open-time cleanup: crash leftovers stay until `gc --yes` removes them,
    so a dry run shows them and a listing changes nothing."""

    def clean_leftovers(self) -> int:
        return 0


def open_store(run_dir: Path | None, writes: bool = False) -> CheckpointStore:
    """The store of `run_dir` (see locate). A reader's store is read-only: it creates nothing there,
    not even the lock file; a writer's (gc --yes, rm) keeps crash leftovers for gc to report."""
    root = locate(run_dir)
    return InspectingStore(root) if writes else CheckpointStore(root, readonly=True)


def check_ids(store: CheckpointStore, ids: Iterable[str]) -> list[str]:
    """The ids, each well formed and present; exit 2 naming every one that is not (before any work)."""
    ids = list(dict.fromkeys(ids))
    present = set(store.list_ids())
    problems = []
    for checkpoint_id in ids:
        try:
            check_id(checkpoint_id)
        except InvalidCheckpointId as exc:
            problems.append(str(exc))
            continue
        if checkpoint_id not in present:
            problems.append(f"no checkpoint {checkpoint_id} in {store.root}")
    if problems:
        raise usage_error("; ".join(problems) + ". `redline checkpoints ls` lists the ids")
    return ids


def read_manifest(store: CheckpointStore, checkpoint_id: str) -> Manifest:
    """A checked id's manifest; a damaged one exits 1, one deleted meanwhile exits 2."""
    try:
        return store.read_manifest(checkpoint_id)
    except CheckpointCorrupted as exc:
        raise CommandFailed(str(exc), EXIT_DAMAGED) from None
    except InvalidCheckpointId as exc:  # CheckpointNotFound included: deleted since the ids were checked
        raise usage_error(str(exc)) from None


def readable_manifests(store: CheckpointStore) -> tuple[list[Manifest], dict[str, str]]:
    """Every readable manifest (oldest first) and, by id, why each damaged one is unreadable."""
    manifests, damaged = [], {}
    for checkpoint_id in store.list_ids():
        try:
            manifests.append(store.read_manifest(checkpoint_id))
        except CheckpointNotFound:
            continue
        except CheckpointCorrupted as exc:
            damaged[checkpoint_id] = str(exc)
    manifests.sort(key=lambda m: (m.timestamp, m.id))
    return manifests, damaged
