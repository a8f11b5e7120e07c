"""The model card of ``dualform info``: computed once, kept as JSON, read back without torch;
recomputed when its key (versions, source, code) changes, when the file is damaged, on --refresh."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dualform.cli import app
from dualform.models import card as card_mod

runner = CliRunner()
HEAVY = ("torch", "transformers", "transformer_lens")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALFORM_CACHE", str(tmp_path))
    return tmp_path


def info(*args: str) -> str:
    result = runner.invoke(app, ["info", *args])
    assert result.exit_code == 0, result.output
    return result.output


def stored(name: str = "tiny-gpt2") -> dict:
    return json.loads(card_mod.card_path(name).read_text())


def test_card_is_written_once_then_read_back_without_torch(cache):
    first = info("tiny-gpt2")
    path = card_mod.card_path("tiny-gpt2")
    assert path.parent == cache / "cards" and path.exists()
    assert stored()["key"] == card_mod.card_key("tiny-gpt2")
    assert stored()["card"]["rows"][0] == ["architecture", "GPT2LMHeadModel"]
    before = path.stat().st_mtime_ns
    assert info("tiny-gpt2") == first  # the kept card prints the very same text
    assert path.stat().st_mtime_ns == before  # read, not rewritten
    # a fresh interpreter reads the card and runs the whole command without the heavy imports
    code = ("import sys; from dualform.models.card import read_card;"
            "card = read_card('tiny-gpt2');"
            "from typer.testing import CliRunner; from dualform.cli import app;"
            "r = CliRunner().invoke(app, ['info', 'tiny-gpt2']); print(r.output);"
            f"print('CARD', card is not None, 'EXIT', r.exit_code, 'HEAVY',"
            f" sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "DUALFORM_CACHE": str(cache)}, check=True).stdout
    assert "CARD True EXIT 0 HEAVY []" in out
    assert "".join(out.split("CARD True")[0].split()) == "".join(first.split())


def test_a_card_of_other_versions_is_recomputed(cache):
    first = info("tiny-gpt2")
    path = card_mod.card_path("tiny-gpt2")
    for field, value in (("versions", {"transformers": "0.0.1"}), ("versions", {"dualform": "0.0"}),
                         ("source", "tiny:tiny-llama"), ("code", "0" * 64)):
        old = stored()
        old["key"][field] = {**old["key"][field], **value} if isinstance(value, dict) else value
        old["card"]["rows"][1] = ["layers", "99"]  # what a stale card would print
        path.write_text(json.dumps(old))
        assert card_mod.read_card("tiny-gpt2") is None, field
        assert info("tiny-gpt2") == first, field
        assert stored()["key"] == card_mod.card_key("tiny-gpt2")


@pytest.mark.parametrize("content", [b"", b'{"key": {"source": "tiny:tiny-gpt2"', b"\xff\xfe\x00",
                                     b"[]", b'{"key": null}', "broken layout"])
def test_a_damaged_card_file_is_recomputed(cache, content):
    first = info("tiny-gpt2")
    path = card_mod.card_path("tiny-gpt2")
    if content == "broken layout":  # today's key, a card of the wrong shape
        content = json.dumps({"key": stored()["key"], "card": {"rows": [["layers"]]}}).encode()
    path.write_bytes(content)
    assert card_mod.read_card("tiny-gpt2") is None
    assert info("tiny-gpt2") == first
    assert card_mod.read_card("tiny-gpt2") == stored()["card"]


def test_refresh_recomputes_a_current_card(cache):
    first = info("tiny-gpt2")
    edited = stored()
    edited["card"]["rows"][1] = ["layers", "99"]  # today's key: taken as it is
    card_mod.card_path("tiny-gpt2").write_text(json.dumps(edited))
    assert "│ 99 " in info("tiny-gpt2")
    assert info("tiny-gpt2", "--refresh") == first
    assert stored()["card"]["rows"][1] == ["layers", "2"]


def test_an_unwritable_cache_still_prints_the_card(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("DUALFORM_CACHE", str(blocker))
    assert "model card: tiny-llama" in info("tiny-llama")


def test_unknown_model_is_one_message_and_writes_nothing(cache):
    result = runner.invoke(app, ["info", "no-such-model"])
    assert result.exit_code == 2
    assert "Unknown model 'no-such-model'" in result.output and "Traceback" not in result.output
    assert list(cache.iterdir()) == []


def test_a_model_directory_is_keyed_by_its_path_and_files(tmp_path, monkeypatch):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"\0" * 8)
    (model_dir / "README.md").write_text("not part of the key")
    monkeypatch.chdir(tmp_path)
    key = card_mod.card_key("my-model")
    assert key["source"] == f"dir:{model_dir}" and sorted(key["files"]) == ["config.json",
                                                                            "model.safetensors"]
    assert card_mod.card_path("my-model") == card_mod.card_path(str(model_dir))
    assert card_mod.card_path("my-model").name.startswith("my-model-")
    (model_dir / "README.md").write_text("changed")
    assert card_mod.card_key("my-model") == key
    (model_dir / "model.safetensors").write_bytes(b"\0" * 16)
    assert card_mod.card_key("my-model") != key
    assert card_mod.card_path("elsewhere/my-model") != card_mod.card_path("my-model")  # a hub id
