"""`export ID DIR`: a Hugging Face model directory `from_pretrained` loads; `--single-file PATH`: one .safetensors.

No live model is needed: the directory's config.json comes from the config stored in the
checkpoint's manifest (every save of a Hugging Face model stores it), or from `--config-from
MODEL` for checkpoints saved without one. The model class is built on the meta device (no
memory) only to check that the checkpoint holds exactly its tensors, with their shapes.
Tensors are read and verified under the store's shared lock, then written outside it.
"""

from __future__ import annotations

from pathlib import Path

from engine.checkpoints_cli.failures import EXIT_DAMAGED, EXIT_FAILED, CommandFailed, usage_error
from engine.checkpoints_cli.output import emit
from engine.checkpoints_cli.progress import ProgressBar
from engine.checkpoints_cli.run_store import check_ids, read_manifest
from engine.store.errors import CheckpointCorrupted, CheckpointError
from engine.store.manifests import Manifest
from engine.store.store import CheckpointStore
from engine.units import human_bytes

_LISTED = 5


def export_command(store: CheckpointStore, checkpoint_id: str, out_dir: Path | None, single_file: Path | None,
                   config_from: str | None, as_json: bool) -> int:
    from engine.store.export import export_tensors, write_pretrained, write_safetensors

    if (out_dir is None) == (single_file is None):
        raise usage_error("give either DIR (a Hugging Face directory) or --single-file PATH, not both or neither")
    check_ids(store, [checkpoint_id])
    if out_dir is not None and out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise usage_error(f"{out_dir} already exists and is not an empty directory; choose a new directory")
    with store.lock(exclusive=False):
        manifest = read_manifest(store, checkpoint_id)
        skeleton = _skeleton(manifest, config_from) if out_dir is not None else None
        tensors = export_tensors(manifest, _load_all(store, manifest))
    try:
        if single_file is not None:
            written = write_safetensors(single_file, manifest, tensors)
        else:
            written = write_pretrained(out_dir, skeleton, lambda: tensors)
    except CheckpointError as exc:
        raise CommandFailed(str(exc), EXIT_FAILED) from None
    except OSError as exc:
        raise CommandFailed(f"cannot write the export to {single_file or out_dir}: {exc.strerror or exc}", EXIT_FAILED) from None
    kind = "safetensors file" if single_file is not None else "Hugging Face directory"
    data = {"checkpoint_id": checkpoint_id, "path": str(written), "kind": "single_file" if single_file else "pretrained",
            "tensors": len(manifest.tensors), "bytes": manifest.size_bytes}
    emit(as_json, data, f"exported {checkpoint_id} ({len(manifest.tensors)} tensors, "
                        f"{human_bytes(manifest.size_bytes)}) as a {kind}: {written}")
    return 0


def _load_all(store: CheckpointStore, manifest: Manifest) -> dict:
    """Verified host bytes of every distinct tensor, by hash."""
    from engine.store.tensors import new_host_buffer, numpy_bytes

    records = list({r.hash: r for r in manifest.tensors}.values())
    sources = {}
    with ProgressBar(sum(r.nbytes for r in records), "reading") as bar:
        for rec in records:
            buf = new_host_buffer(rec.nbytes, False)
            try:
                store.read_blob(rec, checkpoint_id=manifest.id, into=numpy_bytes(buf))
            except CheckpointCorrupted as exc:
                raise CommandFailed(str(exc), EXIT_DAMAGED) from None
            sources[rec.hash] = buf
            bar.advance(rec.nbytes)
    return sources


def _skeleton(manifest: Manifest, config_from: str | None):
    """The checkpoint's model class on the meta device, from its stored config (or `config_from`'s)."""
    import torch
    import transformers

    config = _config(manifest, config_from)
    model_class = getattr(transformers, manifest.model_class, None) if manifest.model_class else None
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        model_class = None
    try:
        with torch.device("meta"):
            model = model_class(config) if model_class else transformers.AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # transformers raises many kinds for a config it cannot build
        raise CommandFailed(f"cannot build {manifest.model_class or 'a causal LM'} from the config: "
                            f"{type(exc).__name__}: {exc}", EXIT_FAILED) from None
    _check_fits(manifest, model)
    return model


def _config(manifest: Manifest, config_from: str | None):
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if config_from is not None:
        from engine.model_source import ModelLoadError, locate_model_dir

        try:
            directory = locate_model_dir(config_from)
        except ModelLoadError as exc:
            raise usage_error(str(exc)) from None
        if directory is None:  # the demo model
            from engine.demo_model import ensure_demo_model

            directory = ensure_demo_model()
        return AutoConfig.from_pretrained(directory, local_files_only=True)
    data = manifest.model_config
    if not data:
        raise CommandFailed(
            f"checkpoint {manifest.id} stores no model config (saved from "
            f"{manifest.model_class or 'a model'} without a Hugging Face config, or by an older Redline). "
            "Give --config-from MODEL (the model directory or cached hub id it was saved from), or export "
            "the weights alone with --single-file PATH", EXIT_FAILED)
    model_type = data.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise CommandFailed(f"this transformers does not know the model type {model_type!r} of checkpoint "
                            f"{manifest.id}; export with --single-file PATH", EXIT_FAILED)
    return CONFIG_MAPPING[model_type].from_dict(dict(data))


def _check_fits(manifest: Manifest, model) -> None:
    """Exactly the model's tensors, with its shapes: else from_pretrained would fill the gaps at random."""
    stored = manifest.by_name()
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    problems = []
    missing = [n for n in expected if n not in stored]
    extra = [n for n in stored if n not in expected]
    if missing:
        problems.append(f"{len(missing)} tensors of the model are missing ({', '.join(missing[:_LISTED])})")
    if extra:
        problems.append(f"{len(extra)} tensors are not in the model ({', '.join(extra[:_LISTED])})")
    shapes = [f"{n}: {list(stored[n].shape)} stored, {list(s)} in the model"
              for n, s in expected.items() if n in stored and stored[n].shape != s]
    problems += shapes[:_LISTED]
    if problems:
        raise CommandFailed(f"checkpoint {manifest.id} does not fit {type(model).__name__} built from its config: "
                            f"{'; '.join(problems)}. Export with --single-file PATH instead", EXIT_FAILED)
