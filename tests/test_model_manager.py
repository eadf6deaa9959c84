"""engine.model_manager: offline loading of the demo model, directories and cached hub ids."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from engine.model_manager import ModelLoadError, ModelManager, parse_device, parse_dtype
from engine.tokenizer import byte_tokenizer
from tests.conftest import make_tiny_llama, make_tiny_qwen2
from tests.fixtures_demo import demo_model_dir  # noqa: F401  (session fixture)

CPU = torch.device("cpu")
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _save(model, directory):
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def tiny_dir(tmp_path):
    return _save(make_tiny_qwen2(seed=3), tmp_path / "tiny")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in the real on-disk layout, selected through HF_HUB_CACHE."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def put_in_hub_cache(cache, repo_id, model):
    """Place `model` as the cache would after `huggingface-cli download repo_id`."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = _save(model, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.mark.slow
def test_loads_the_demo_model(demo_model_dir):  # noqa: F811
    stages = []
    manager = ModelManager("demo", progress=lambda done, total, msg: stages.append(msg))
    assert manager.load_model(), manager.error
    assert manager.error is None
    assert manager.source_path == demo_model_dir
    assert (manager.device, manager.dtype) == (CPU, torch.float32)
    model = manager.model
    assert model.config.model_type == "qwen2" and not model.training
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert manager.tokenizer.decode(manager.tokenizer("héllo")["input_ids"]) == "héllo"
    assert any(msg.startswith("resolving") for msg in stages)
    assert any(msg.startswith("weights:") for msg in stages)
    assert stages[-1].startswith("model ready")


def test_loads_a_save_pretrained_directory(tiny_dir):
    manager = ModelManager(str(tiny_dir))
    model = manager.load()
    assert _same_weights(model, make_tiny_qwen2(seed=3))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert manager.source_path == tiny_dir


def test_dtype_override_is_applied(tmp_path):
    directory = _save(make_tiny_llama(), tmp_path / "llama")
    model = ModelManager(str(directory), dtype="bf16").load()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_loads_a_hub_id_from_the_local_cache_only(hub_cache):
    snapshot = put_in_hub_cache(hub_cache, "tiny-org/tiny-qwen", make_tiny_qwen2(seed=4))
    manager = ModelManager("tiny-org/tiny-qwen")
    assert manager.load_model(), manager.error
    assert manager.source_path == snapshot
    assert _same_weights(manager.model, make_tiny_qwen2(seed=4))


def _refusal(name, caplog) -> str:
    manager = ModelManager(name)
    with caplog.at_level(logging.ERROR, logger="engine.model_manager"):
        assert manager.load_model() is False
    assert manager.model is None and manager.error
    record = caplog.records[-1]
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert record.getMessage() == manager.error
    assert "\n" not in manager.error and "Traceback" not in manager.error
    with pytest.raises(ModelLoadError) as raised:
        ModelManager(name).load()
    assert str(raised.value) == manager.error
    return manager.error


def test_refuses_a_hub_id_that_is_not_cached(hub_cache, caplog):
    message = _refusal("nobody/no-such-model", caplog)
    assert str(hub_cache) in message
    assert "models--nobody--no-such-model" in message
    assert "hf download nobody/no-such-model" in message
    assert "--model PATH" in message


def test_refuses_a_missing_directory(tmp_path, caplog):
    message = _refusal(str(tmp_path / "nowhere"), caplog)
    assert str(tmp_path / "nowhere") in message


def test_refuses_a_file(tmp_path, caplog):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a directory")
    assert "is a file, not a model directory" in _refusal(str(weights), caplog)


def test_refuses_an_empty_directory(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    message = _refusal(str(tmp_path / "empty"), caplog)
    assert "is empty" in message and "save_pretrained" in message


def test_refuses_pickled_weights_without_reading_them(tiny_dir, caplog):
    for weights in tiny_dir.glob("*.safetensors"):
        weights.unlink()
    # Not a valid pickle at all: had anything tried to unpickle it, a different error would appear.
    (tiny_dir / "pytorch_model.bin").write_bytes(b"\x80\x04 definitely not safe")
    message = _refusal(str(tiny_dir), caplog)
    assert "pytorch_model.bin" in message and "pickle" in message and "safetensors" in message


def test_refuses_a_directory_without_config(tmp_path, caplog):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "notes.txt").write_text("hello")
    assert "no config.json" in _refusal(str(tmp_path / "weights"), caplog)


def test_a_model_without_tokenizer_loads_with_perplexity_off(tmp_path, caplog):
    make_tiny_qwen2(seed=5).save_pretrained(tmp_path / "no-tok")
    manager = ModelManager(str(tmp_path / "no-tok"))
    with caplog.at_level(logging.ERROR, logger="engine.model_manager"):
        assert manager.load_model(), manager.error
    assert not caplog.records and manager.error is None
    assert manager.tokenizer is None
    assert _same_weights(manager.model, make_tiny_qwen2(seed=5))
    note = manager.tokenizer_note
    assert str(tmp_path / "no-tok") in note and "Perplexity is off" in note and "--tokenizer PATH" in note
    assert "\n" not in note


def test_a_character_tokenizer_that_is_only_a_tokenizer_config_loads(tmp_path):
    """ByT5's tokenizer has no vocabulary file: tokenizer_config.json alone describes it."""
    directory = tmp_path / "byt5-tok"
    make_tiny_llama(vocab_size=384).save_pretrained(directory)  # ByT5: 3 specials + 256 bytes + 125 extra ids
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "generation_config.json",
                                                           "model.safetensors", "tokenizer_config.json"]
    manager = ModelManager(str(directory))
    model = manager.load()
    tokenizer = manager.tokenizer
    assert type(tokenizer).__name__ == "ByT5Tokenizer" and manager.tokenizer_note is None
    ids = tokenizer("héllo", return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "héllo"
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 384)


def test_tokenizer_from_another_directory(tmp_path):
    make_tiny_qwen2(seed=6).save_pretrained(tmp_path / "model")
    byte_tokenizer().save_pretrained(tmp_path / "tokenizer")
    manager = ModelManager(str(tmp_path / "model"), tokenizer=str(tmp_path / "tokenizer"))
    assert manager.load_model(), manager.error
    assert manager.source_path == tmp_path / "model" and manager.tokenizer_note is None
    assert len(manager.tokenizer) == len(byte_tokenizer())
    assert manager.tokenizer.decode(manager.tokenizer("héllo")["input_ids"]) == "héllo"


def test_a_named_tokenizer_that_cannot_serve_the_model_is_refused(tmp_path, caplog):
    make_tiny_qwen2().save_pretrained(tmp_path / "model")  # vocabulary of 300
    (tmp_path / "byt5").mkdir()
    (tmp_path / "byt5" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    (tmp_path / "empty").mkdir()
    cases = {"missing": "does not exist", "byt5": "384 tokens but the model's vocabulary holds only 300",
             "empty": "cannot be used"}
    for name, expected in cases.items():
        manager = ModelManager(str(tmp_path / "model"), tokenizer=str(tmp_path / name))
        with caplog.at_level(logging.ERROR, logger="engine.model_manager"):
            assert manager.load_model() is False
        assert manager.model is None and expected in manager.error and str(tmp_path / name) in manager.error


def test_refuses_remote_code(tiny_dir, caplog):
    config = json.loads((tiny_dir / "config.json").read_text())
    config.update(model_type="totally-custom", auto_map={"AutoConfig": "custom.MyConfig"})
    (tiny_dir / "config.json").write_text(json.dumps(config))
    (tiny_dir / "custom.py").write_text("raise SystemExit('remote code ran')\n")
    message = _refusal(str(tiny_dir), caplog)
    assert "trust_remote_code" in message and "never runs" in message


def test_reload_restores_corrupted_weights_in_place(tiny_dir):
    manager = ModelManager(str(tiny_dir))
    model = manager.load()
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("nan"))
        model.model.layers[0].mlp.up_proj.weight.mul_(100)
    assert manager.reload(), manager.error
    assert manager.model is model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert _same_weights(model, make_tiny_qwen2(seed=3))


def test_reload_refuses_weights_of_another_shape(tiny_dir, caplog):
    manager = ModelManager(str(tiny_dir))
    model = manager.load()
    make_tiny_qwen2(layers=3).save_pretrained(tiny_dir)
    with caplog.at_level(logging.ERROR, logger="engine.model_manager"):
        assert manager.reload() is False
    assert "no longer match" in manager.error
    assert manager.model is model and _same_weights(model, make_tiny_qwen2(seed=3))


@pytest.mark.parametrize(
    "text, expected",
    [(None, torch.float32), ("auto", torch.float32), ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
     ("FP16", torch.float16), ("half", torch.float16), ("fp32", torch.float32), ("torch.float32", torch.float32),
     (torch.float16, torch.float16)],
)
def test_dtype_parsing(text, expected):
    assert parse_dtype(text, CPU) == expected


def test_dtype_default_on_cuda_is_bf16():
    assert parse_dtype(None, torch.device("cuda")) == torch.bfloat16


@pytest.mark.parametrize("text", ["fp8x", "int8", "banana", ""])
def test_dtype_nonsense_is_a_clear_error(text):
    with pytest.raises(ValueError, match="float32 \\(fp32\\), bfloat16 \\(bf16\\)"):
        parse_dtype(text, CPU)


def test_device_parsing():
    expected_default = "cuda" if torch.cuda.is_available() else "cpu"
    assert parse_device(None).type == expected_default
    assert parse_device("auto").type == expected_default
    assert parse_device("cpu") == CPU and parse_device(" CPU ") == CPU
    assert parse_device(CPU) == CPU


@pytest.mark.parametrize("text", ["banana", "gpu", "cuda:x", "tpu"])
def test_device_nonsense_is_a_clear_error(text):
    with pytest.raises(ValueError, match="cpu, cuda"):
        parse_device(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        ModelManager("demo", device="cuda:0")


def test_importing_the_module_does_not_need_torch():
    import subprocess
    import sys

    code = "import sys, engine.model_manager; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
