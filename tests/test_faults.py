"""Fault injection: kill -9 mid-run and mid-write, a full disk, concurrent runs, other settings
into one directory, bad input. Each case checks the message and that no earlier result is lost.

Runs use the tiny random model with tiny settings, so each case takes seconds.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dualform import load_model
from dualform.cli import app
from dualform.core.dual_form import dual_form
from dualform.core.finetune import FinetuneDivergedError, finetune_kv
from dualform.errors import InvalidArgumentError
from dualform.experiments.dai import config as dai_config
from dualform.experiments.dai import protocol
from dualform.experiments.dai.config import DaiConfig
from dualform.experiments.dai.metric_names import ACCURACY, REC2FTP, SIMAOU, SIMAOU_RANDOM
from dualform.experiments.dai.protocol import run_dai
from dualform.experiments.dai.results import DaiResults
from dualform.experiments.dai.sweep import run_sweep
from dualform.infra import io as dio
from dualform.infra.executors import LocalExecutor
from dualform.infra.lock import LOCK_NAME, locked
from dualform.infra.results_dir import SettingsMismatchError
from dualform.models import load as load_mod
from dualform.probes import ContextLengthError, capture
from dualform.tasks.prompts import TaskError, load_task, load_user_task
from dualform.viz.report import write_report
from dualform.viz.tables import dai_markdown

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
TINY = ["--model", "tiny-llama", "--shots", "2", "--n-test", "2", "--n-validation", "2",
        "--demo-seeds", "1", "--lr-grid", "0.1", "--no-untrained", "--no-attribution",
        "--no-report"]
CONFIG = DaiConfig(model="tiny-llama", tasks=("afinn-sentiment",), shots=2, n_validation=2,
                   n_test=2, demo_seeds=(1,), lr_grid=(0.1,), untrained_baseline=False,
                   attribution=False)


def cli(*args: str):
    return runner.invoke(app, ["reproduce", "dai", *TINY, *args])


def error_of(result) -> str:
    """The one-line message of an expected failure (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A finished run of one task; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("done")
    run_dai(out, CONFIG, progress=False)
    return out / "results.json"


def copy_of(done: Path, tmp_path: Path) -> Path:
    (tmp_path / "results.json").write_bytes(done.read_bytes())
    return tmp_path / "results.json"


def spawn(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the child exited before {what}: {proc.stdout.read()}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# --------------------------------------------------------------------------- kill -9


def test_kill_mid_run_keeps_finished_tasks_and_resumes(tmp_path):
    config = "DaiConfig(model='tiny-llama', tasks=('afinn-sentiment', 'vader-valence'), shots=2, " \
             "n_validation=2, n_test=2, demo_seeds=(1,), lr_grid=(0.1,), " \
             "untrained_baseline=False, attribution=False)"
    proc = spawn(f"""
        from dualform.experiments.dai.config import DaiConfig
        from dualform.experiments.dai.protocol import run_dai
        run_dai({str(tmp_path)!r}, {config}, progress=False)
    """)
    path = tmp_path / "results.json"
    wait_for(lambda: path.exists() and "afinn-sentiment" in path.read_text(), proc,
             "the first task was written")
    kill(proc)  # somewhere in the second task
    first = json.loads(path.read_text())["tasks"]["afinn-sentiment"]
    result = cli("--tasks", "afinn-sentiment,vader-valence", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output  # the lock died with the process
    after = json.loads(path.read_text())
    assert after["tasks"]["afinn-sentiment"] == first  # kept, not recomputed
    assert set(after["tasks"]) == {"afinn-sentiment", "vader-valence"}


def test_kill_mid_write_leaves_the_old_file_and_the_orphan_is_cleaned(tmp_path, done):
    path = copy_of(done, tmp_path)
    before = path.read_bytes()
    marker = tmp_path / "in-write"
    proc = spawn(f"""
        import os, time, pathlib
        from dualform.infra import io
        def stuck(fd):
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(600)
        io.os.fsync = stuck
        io.write_json_atomic({str(path)!r}, {{"config": {{}}, "tasks": {{}}}})
    """)
    wait_for(marker.exists, proc, "the write started")
    kill(proc)
    assert path.read_bytes() == before
    orphans = list(tmp_path.glob(".results.json.*"))
    assert orphans  # what kill -9 leaves mid-write …
    result = cli("--tasks", "afinn-sentiment", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob(".results.json.*"))  # … is removed by the next run
    assert json.loads(path.read_text())["tasks"] == json.loads(before)["tasks"]


def test_concurrent_run_stops_with_a_message_and_a_killed_holder_does_not_block(tmp_path, done):
    path = copy_of(done, tmp_path)
    before = path.read_bytes()
    proc = spawn(f"""
        import sys, time
        from dualform.infra.lock import locked
        with locked({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)
    assert proc.stdout.readline().strip() == "locked"
    message = error_of(cli("--tasks", "afinn-sentiment,vader-valence", "--out", str(tmp_path)))
    assert f"{tmp_path} is in use by another dualform run (pid {proc.pid})" in message
    assert path.read_bytes() == before
    kill(proc)
    assert (tmp_path / LOCK_NAME).exists()  # a stale lock file …
    result = cli("--tasks", "afinn-sentiment", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output  # … does not block


def test_a_locked_directory_is_refused_before_any_work(tmp_path):
    with locked(tmp_path), pytest.raises(Exception, match="in use by another"):
        run_dai(tmp_path, CONFIG, progress=False)
    assert not (tmp_path / "results.json").exists()


# --------------------------------------------------------------------------- full disk


def test_full_disk_while_writing_results(tmp_path, done, monkeypatch):
    path = copy_of(done, tmp_path)
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dio.os, "fsync", full)
    message = error_of(cli("--tasks", "afinn-sentiment,vader-valence", "--out", str(tmp_path)))
    assert f"Could not write {path} (No space left on device)" in message
    assert "the previous version is unchanged" in message
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".results.json.*"))


def test_full_disk_while_caching_the_model_and_an_interrupted_first_load(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALFORM_CACHE", str(tmp_path))
    orphan = tmp_path / ".smollm2-135m-abcd1234"  # what a killed first load leaves
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"\0" * 1000)

    def full(gguf_dir, gguf_file, out):
        (out / "model.safetensors").write_bytes(b"\0" * 1000)  # half written, then:
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: "
                           "StorageFull, message: \"No space left on device\" })")

    monkeypatch.setattr(load_mod, "_dequantise", full)
    result = runner.invoke(app, ["info", "smollm2-135m"])
    message = error_of(result)
    assert "Could not write the dequantised weights of 'smollm2-135m'" in message
    assert "No space left on device" in message and "DUALFORM_CACHE" in message
    assert [p.name for p in tmp_path.iterdir() if p.name != LOCK_NAME] == []  # no temporaries


# --------------------------------------------------------------------------- one directory, other settings


def test_other_settings_are_refused_and_nothing_changes(tmp_path, done):
    path = copy_of(done, tmp_path)
    before = path.read_bytes()
    message = error_of(cli("--tasks", "afinn-sentiment", "--shots", "3", "--out", str(tmp_path)))
    assert f"{path} holds results made with other settings" in message
    assert "shots: 2 on disk, 3 in this run" in message
    assert "--out" in message and "--overwrite" in message
    assert path.read_bytes() == before


def test_overwrite_moves_the_old_results_aside(tmp_path, done):
    path = copy_of(done, tmp_path)
    before = path.read_bytes()
    result = cli("--tasks", "afinn-sentiment", "--shots", "3", "--out", str(tmp_path), "--overwrite")
    assert result.exit_code == 0, result.output
    aside = list(tmp_path.glob("results.replaced-*.json"))
    assert len(aside) == 1 and aside[0].read_bytes() == before
    assert json.loads(path.read_text())["config"]["shots"] == 3


def test_new_tasks_are_added_beside_the_old_ones(tmp_path, done):
    path = copy_of(done, tmp_path)
    old = json.loads(path.read_text())["tasks"]["afinn-sentiment"]
    result = cli("--tasks", "vader-valence", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    after = json.loads(path.read_text())
    assert after["tasks"]["afinn-sentiment"] == old
    assert list(after["tasks"]) == after["config"]["tasks"] == ["afinn-sentiment", "vader-valence"]
    assert after["settings"]["vader-valence"]["shots"] == 2


def test_library_refuses_other_settings_too(tmp_path, done):
    copy_of(done, tmp_path)
    with pytest.raises(SettingsMismatchError, match="n_test: 2 on disk, 4 in this run"):
        run_dai(tmp_path, DaiConfig(**{**CONFIG.__dict__, "n_test": 4}), progress=False)


@pytest.mark.parametrize("content, where", [
    (b"", "empty file"), (b'{"config": {"model": "tiny', "line 1, column"),
    (b'{\n  "tasks": {\n    "a": 1,\n', "line 4"), (b"\x89PNG\r\n\x1a\n\xff\xfe", "line 1: not UTF-8"),
])
def test_damaged_results_json_is_named_and_kept(tmp_path, content, where):
    path = tmp_path / "results.json"
    path.write_bytes(content)
    message = error_of(cli("--tasks", "afinn-sentiment", "--out", str(tmp_path)))
    assert f"{path}, {where}" in message and "--overwrite" in message
    assert path.read_bytes() == content


# --------------------------------------------------------------------------- bad input (CLI)


@pytest.mark.parametrize("args, expected", [
    (["--lr-grid=-0.01"], "must be a finite number > 0, got -0.01 (a negative rate is gradient ascent"),
    (["--lr-grid", "nan"], "must be a finite number > 0, got nan"),
    (["--n-test", "0"], "n_test (--n-test) must be an integer >= 1, got 0"),
    (["--shots", "0"], "shots (--shots) must be an integer >= 1, got 0"),
    (["--batch-size", "-1"], "batch_size (--batch-size; 0 there: from free memory) must be an integer >= 1"),
    (["--n-untrained", "-3"], "n_untrained (--n-untrained; 0 there: every test example) must be an integer >= 1"),
    (["--tasks", ""], "The task list (--tasks) is empty"),
    (["--device", "tpu"], "Unknown device 'tpu'; choose cpu, cuda"),
    (["--tasks", "no-such-task"], "pip install dualform[hub]"),  # printed literally
])
def test_bad_options_fail_before_any_model_is_loaded(tmp_path, monkeypatch, args, expected):
    monkeypatch.setattr(dai_config, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    result = cli(*(["--tasks", "afinn-sentiment"] if "--tasks" not in args else []), *args,
                 "--out", str(tmp_path))
    assert expected in error_of(result)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_suggests_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(dai_config, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    message = error_of(cli("--tasks", "afinn-sentiment", "--device", "cuda", "--out", str(tmp_path)))
    assert "CUDA is not available here" in message and "--device cpu" in message


def test_out_under_a_file_fails_before_any_model_is_loaded(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(dai_config, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    message = error_of(cli("--tasks", "afinn-sentiment", "--out", str(tmp_path / "file" / "out")))
    assert f"{tmp_path / 'file'} is a file, not a directory" in message


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(protocol, "run_task", bug)
    result = cli("--tasks", "afinn-sentiment", "--out", str(tmp_path))
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)


def test_every_rate_diverged_shows_diverged_not_numbers(tmp_path):
    result = cli("--tasks", "afinn-sentiment", "--lr-grid", "1e6", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "diverged" in result.output
    results = DaiResults.load(tmp_path)
    row = next(line for line in dai_markdown(results).splitlines() if "afinn" in line)
    assert row.count("| diverged") >= 6  # FT columns, not numbers
    seed = results.tasks["afinn-sentiment"].seeds[0]
    assert all(s.ft_diverged for s in results.tasks["afinn-sentiment"].seeds)
    assert seed.ft_diverged and seed.metric(ACCURACY["ft"]) is None
    assert seed.ft_diverged_reason == "every learning rate diverged on validation"
    assert SIMAOU not in seed.metrics and REC2FTP not in seed.metrics
    assert SIMAOU_RANDOM in seed.metrics and seed.metric(ACCURACY["icl"]) is not None
    assert seed.selection.lr_val_acc["1000000.0"].startswith("diverged")
    page = write_report(tmp_path).read_text()
    assert "afinn-sentiment (FT diverged)" in page and ">diverged</td>" in page


def test_a_sweep_with_other_settings_is_refused_and_keeps_its_jobs(tmp_path):
    run_sweep(tmp_path, CONFIG, executor=LocalExecutor(progress=False))
    jobs = {p.name: p.read_bytes() for p in (tmp_path / "jobs").iterdir()}
    other = DaiConfig(**{**CONFIG.__dict__, "shots": 3})
    with pytest.raises(SettingsMismatchError, match="shots: 2 on disk, 3 in this run"):
        run_sweep(tmp_path, other, executor=LocalExecutor(progress=False))
    assert {p.name: p.read_bytes() for p in (tmp_path / "jobs").iterdir()} == jobs
    run_sweep(tmp_path, other, executor=LocalExecutor(progress=False), overwrite=True)
    (aside,) = tmp_path.glob("jobs.replaced-*")  # the old jobs, renamed, not deleted
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == jobs
    assert len(list((tmp_path / "tiny-llama").glob("results.replaced-*.json"))) == 1
    assert json.loads((tmp_path / "tiny-llama" / "results.json").read_text())["config"]["shots"] == 3


def test_an_odd_test_split_is_fine_and_the_train_split_takes_the_rest():
    task = load_task("afinn-sentiment", seed=0, n_test=3, n_validation=2)
    assert len(task.test) == 3 and len(task.train) > 0


# --------------------------------------------------------------------------- bad input (library)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.mark.parametrize("texts, kwargs, expected", [
    ([], {}, (InvalidArgumentError, "texts (the finetuning data) is empty")),
    ([""], {}, (InvalidArgumentError, "text 0 has 1 token(s); a next-token loss needs at least 2")),
    (["a b"], {"batch_size": 0}, (InvalidArgumentError, "batch_size must be an integer >= 1, got 0")),
    (["a b"], {"epochs": 0}, (InvalidArgumentError, "epochs must be an integer >= 1, got 0")),
    (["a b"], {"lr": -0.01}, (InvalidArgumentError, "gradient ascent")),
    (["a b"], {"lr": float("nan")}, (InvalidArgumentError, "got nan")),
])
def test_finetune_kv_refuses_bad_input(tiny, texts, kwargs, expected):
    error, text = expected
    with pytest.raises(error) as info:
        finetune_kv(tiny, texts, **{"lr": 0.01, **kwargs})
    assert text in str(info.value)


def test_a_huge_rate_is_caught_by_the_size_of_the_update(tiny):
    with pytest.raises(FinetuneDivergedError, match=r"more than 1× the weights' norm .*lr=1000"):
        finetune_kv(tiny, ["Sentence: a fine film Label: Positive"] * 2, 1000.0)


def test_past_the_context_window_is_the_same_error_everywhere(tiny):
    n_ctx = tiny.cfg.n_ctx
    text = "ab" * n_ctx  # byte tokenizer: ~one token a character, no truncation anywhere
    tokens = torch.zeros(1, n_ctx + 1, dtype=torch.long)
    for call in (lambda: finetune_kv(tiny, [text], 0.01), lambda: dual_form(tiny, text, 3),
                 lambda: capture(tiny, tokens), lambda: capture(tiny, text),
                 lambda: dual_form(tiny, tokens, 3)):
        with pytest.raises(ContextLengthError, match=rf"context window of {n_ctx} tokens"):
            call()


@pytest.mark.parametrize("content, expected", [
    ("", "holds no examples"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", "label": 0}\n',
     "leave the"),
    ('{"text": "a", "label": 0}\n{"text": "b", "lab', "line 2, column"),
    (b"\x00\xff\xfe binary".decode("latin-1"), "line 1: not UTF-8"),
])
def test_user_task_file_errors_name_the_file_and_line(tmp_path, content, expected):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(TaskError) as info:
        load_user_task(path, "Text: {x} Label: {y}", ["no", "yes"])
    assert str(path) in str(info.value) and expected in str(info.value)


def test_an_orphan_of_a_killed_first_load_is_removed_once_the_cache_is_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALFORM_CACHE", str(tmp_path))
    done_dir = tmp_path / "smollm2-135m"
    done_dir.mkdir()
    (done_dir / "config.json").write_text("{}")
    (done_dir / "model.safetensors").write_bytes(b"")
    orphan = tmp_path / ".smollm2-135m-x1y2z3ab"
    orphan.mkdir()
    monkeypatch.setattr(load_mod, "_dequantise", lambda *a: pytest.fail("dequantised again"))
    assert load_mod.embedded_model_dir() == done_dir
    assert not orphan.exists() and done_dir.exists()
