"""Logs a person and a log file can read: line-based progress off a terminal, --progress /
--quiet on every long command, rounded human output, strict JSON, help with choices and
defaults, --workers from the machine, metrics sinks."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vlmsae.cli import app
from vlmsae.core import progress as _progress
from vlmsae.core.io import to_json, write_json
from vlmsae.core.numbers import fmt, pct

SRC = Path(__file__).resolve().parents[1] / "src"
LONG_COMMANDS = [
    ["cache"], ["embed"], ["train"], ["score"], ["top-images"], ["uniqueness"], ["hierarchy"],
    ["steer-eval"], ["toyworld", "build"], ["toyworld", "evaluate"], ["toyworld", "export"],
    ["demo"], ["evaluate"],
]  # fmt: skip
runner = CliRunner()


def _help(*command: str) -> str:
    res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.output


# -- progress ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(_progress, "_clock", fake)
    monkeypatch.setattr(_progress, "HEARTBEAT_THREAD", False)  # the tests tick it by hand
    monkeypatch.setattr(_progress, "_HEART", _progress._Heartbeat())
    monkeypatch.delenv("VLMSAE_PROGRESS_HEARTBEAT", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("VLMSAE_PROGRESS_MIN_INTERVAL", raising=False)
    return fake


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vlmsae.progress"]


def test_log_mode_prints_a_line_per_tenth_and_a_final_line(clock, caplog):
    caplog.set_level(logging.INFO, logger="vlmsae.progress")
    with _progress.progress_mode("log"):
        bar = _progress.progress(total=1000, desc="clip-vit", unit="img")
        for _ in range(1000):
            clock.t += 0.01  # 10 s in all: every 10 % is >= 2 s after the last line
            bar.update(1)
        bar.set_postfix(loss=0.123456)
        bar.close()
        bar.close()  # once only
    lines = _progress_lines(caplog)
    assert len(lines) == 5, lines  # 20 %, 40 %, 60 %, 80 % (2 s apart) and the final line
    assert lines[0].startswith("clip-vit: 200/1,000 img (20%)")
    assert lines[-1].startswith("clip-vit: 1,000/1,000 img (100%)") and "done" in lines[-1]
    assert "loss=0.123" in lines[-1] and not any("\r" in line for line in lines)


def test_log_mode_without_total_prints_every_30_seconds(clock, caplog):
    caplog.set_level(logging.INFO, logger="vlmsae.progress")
    with _progress.progress_mode("log"):
        for _ in _progress.progress(iter(range(100)), desc="rows"):
            clock.t += 1.0
    lines = _progress_lines(caplog)
    assert len(lines) == 100 // 30 + 1, lines


def test_short_loops_stay_silent_and_none_prints_nothing(clock, caplog):
    caplog.set_level(logging.INFO, logger="vlmsae.progress")
    with _progress.progress_mode("log"):
        assert list(_progress.progress(range(5), desc="quick")) == list(range(5))
    with _progress.progress_mode("none"):
        for _ in _progress.progress(range(50), desc="silent"):
            clock.t += 10
    assert _progress_lines(caplog) == []


def test_the_heartbeat_speaks_for_a_silent_stage_after_30_seconds(clock, caplog):
    """Nothing logged for 27 s (90 % of 30) while a stage runs: one line naming it, with its
    time; any log line restarts the wait; an open loop inside speaks with its count."""
    caplog.set_level(logging.INFO)
    heart = _progress._HEART
    with _progress.progress_mode("log"), _progress.activity("demo: score"):
        clock.t = 26.0
        assert heart.tick() is None
        clock.t = 31.0
        assert heart.tick() == "demo: score: still running, 31.0s so far"
        clock.t = 45.0
        logging.getLogger("vlmsae.demo").info("score batchtopk-x4-k8-s0")  # a line: wait again
        clock.t = 70.0
        assert heart.tick() is None
        bar = _progress.progress(total=10, desc="score SAEs", unit="sae")
        bar.update(3)
        clock.t = 76.0
        assert heart.tick().startswith("score SAEs: 3/10 sae (30%)")
        bar.close()
        clock.t = 200.0
        assert heart.tick() == "demo: score: still running, 3:20 so far"
    clock.t = 400.0
    assert heart.tick() is None  # the stage is over: nothing to speak for
    lines = _progress_lines(caplog)
    assert sum("still running" in line for line in lines) == 2


def test_the_heartbeat_is_off_outside_log_mode(clock, caplog):
    with _progress.progress_mode("none"), _progress.activity("quiet stage"):
        clock.t = 100.0
        assert _progress._HEART.tick() is None


def test_warn_once_warns_once_per_text(caplog):
    logger = logging.getLogger("vlmsae.test_warn_once")
    for _ in range(3):
        _progress.warn_once(logger, "warmup_steps=%d >= steps=%d", 1000, 300)
    _progress.warn_once(logger, "warmup_steps=%d >= steps=%d", 10, 3)
    got = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert got == ["warmup_steps=1000 >= steps=300", "warmup_steps=10 >= steps=3"]


def test_a_real_process_logs_a_heartbeat_while_a_stage_is_silent(tmp_path):
    """A real process with a silent 3 s stage and a 0.5 s heartbeat interval: heartbeat
    lines in its log file, each naming the stage, none once it ended."""
    code = (
        "import logging, time\n"
        "from vlmsae.core.progress import activity\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')\n"
        "with activity('demo: train'):\n"
        "    time.sleep(3)\n"
        "logging.getLogger('vlmsae.demo').info('trained')\n"
        "time.sleep(1.5)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "VLMSAE_PROGRESS": "log",
           "VLMSAE_PROGRESS_HEARTBEAT": "0.5"}  # fmt: skip
    with open(tmp_path / "err", "w") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, env=env, timeout=120, check=True)
    lines = (tmp_path / "err").read_text().splitlines()
    beats = [line for line in lines if "still running" in line]
    assert beats and all(line.startswith("vlmsae.progress: demo: train: still") for line in beats)
    assert lines[-1] == "vlmsae.demo: trained", lines  # silent once the stage is over


def test_a_real_sweep_warns_once_and_logs_no_frames(tmp_path):
    """`vlmsae train --sweep` of 3 SAEs sharing a short schedule, stderr to a file: each
    schedule warning once (not once per SAE), no carriage return."""
    from vlmsae.data.store import ActivationStore

    ActivationStore.write(tmp_path / "acts", np.random.default_rng(0).normal(
        size=(512, 16)).astype(np.float32), meta={"model": "tiny"})  # fmt: skip
    (tmp_path / "sweep.toml").write_text("[grid]\nk = [2, 4, 8]\n")
    args = ["train", "--activations", str(tmp_path / "acts"), "--sweep",
            str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "runs"), "--steps", "20",
            "--batch-size", "64"]  # fmt: skip
    res = _run_cli(args, tmp_path / "train.err")
    text = (tmp_path / "train.err").read_text()
    assert res.returncode == 0, text
    assert "\r" not in text
    warnings = [line for line in text.splitlines() if "WARNING" in line]
    assert len(warnings) == len(set(w.split(" ", 1)[1] for w in warnings)) >= 2, warnings
    assert sum("warmup_steps=" in w for w in warnings) == 1, warnings


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("VLMSAE_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert _progress.get_mode() == "log"  # pytest's stderr is not a terminal
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert _progress.get_mode() == "none"
    with _progress.progress_mode("bar"):
        assert _progress.get_mode() == "bar"  # an explicit choice wins
        assert _progress.progress(range(3), disable=True).silent  # so does disable=True
    monkeypatch.setenv("VLMSAE_PROGRESS", "bar")
    assert _progress.get_mode() == "bar"
    with pytest.raises(ValueError, match="not one of auto, bar, log, none"):
        _progress.set_mode("loud")


def _run_cli(args: list[str], err_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **env}
    full_env.pop("TQDM_DISABLE", None) if "TQDM_DISABLE" not in env else None
    with open(err_path, "w") as err:
        return subprocess.run(
            [sys.executable, "-m", "vlmsae", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            env=full_env,
            text=True,
            timeout=300,
        )


def test_a_real_cache_run_logs_lines_not_frames_to_a_file(tmp_path):
    """stderr redirected to a file: progress is a few plain lines (at 10 % steps, with the
    model's name), no carriage returns, no transformers bars, no DataLoader warning."""
    from vlmsae import toyworld

    data = tmp_path / "toy"
    export = _run_cli(["toyworld", "export", str(data), "--n", "200"], tmp_path / "export.err")
    assert export.returncode == 0
    args = ["cache", "--model", str(toyworld.clip_path()), "--data", str(data), "--split", "test"]
    args += ["--layer", "2", "--batch-size", "8", "--out", str(tmp_path / "acts")]
    res = _run_cli(args, tmp_path / "cache.err", VLMSAE_PROGRESS_MIN_INTERVAL="0")
    log_text = (tmp_path / "cache.err").read_text()
    assert res.returncode == 0, log_text
    assert "\r" not in log_text and "Loading weights" not in log_text, log_text
    assert "suggested max number of worker" not in log_text
    progress = [line for line in log_text.splitlines() if "vlmsae.progress" in line]
    assert 5 <= len(progress) <= 12, log_text  # one per 10 % (batches of 8 of 200) + final
    assert all(" clip: " in line for line in progress), progress  # the model folder's name
    assert len(log_text.splitlines()) <= len(progress) + 4, log_text
    assert "images/s" in res.stdout

    quiet = _run_cli([*args[:-1], str(tmp_path / "q"), "--quiet"], tmp_path / "q.err")
    assert quiet.returncode == 0 and (tmp_path / "q.err").read_text() == ""
    off = _run_cli([*args[:-1], str(tmp_path / "t")], tmp_path / "t.err", TQDM_DISABLE="1")
    assert off.returncode == 0 and "vlmsae.progress" not in (tmp_path / "t.err").read_text()


@pytest.mark.parametrize("command", LONG_COMMANDS, ids=" ".join)
def test_every_long_command_has_progress_and_quiet(command):
    text = _help(*command)
    assert "--progress" in text and "auto|bar|log|none" in text and "--quiet" in text


def test_model_label():
    label = _progress.model_label
    assert label("openai/clip-vit-large-patch14-336") == "clip-vit-large-patch14-336"
    snapshot = "/hf/hub/models--facebook--dinov2-base/snapshots/0123abcd"
    assert label(snapshot) == "dinov2-base"
    assert label("/models/my-clip/") == "my-clip"


# -- human numbers and JSON ---------------------------------------------------------------


def test_human_numbers_have_three_significant_digits():
    assert [fmt(v) for v in (0.520341, 0.5, 30.0, 99.94, 123.4, 12345.6, 3.2e-5)] == [
        "0.520", "0.500", "30.0", "99.9", "123", "12,346", "3.20e-05",
    ]  # fmt: skip
    assert fmt(12345) == "12,345" and fmt(float("nan")) == "-" and fmt(None) == "-"
    assert fmt(np.float32(0.25)) == "0.250" and pct(0.81234) == "81.2%"


def test_json_writes_null_with_a_reason_never_a_bare_nan(tmp_path):
    obj = {
        "r2": float("nan"),
        "max_ms": np.float32("nan"),
        "max_ms_reason": "undefined: every neuron is dead",
        "rates": np.array([0.5, np.inf]),
        "nested": {"x": -np.inf, "ok": np.int64(3)},
        "path": tmp_path,
        "pair": (1, 2.5),
    }
    write_json(tmp_path / "s.json", obj)
    text = (tmp_path / "s.json").read_text()
    assert not re.search(r"[:\[,]\s*-?(NaN|Infinity)", text), text
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert back["r2"] is None and "NaN" in back["r2_reason"]
    assert back["max_ms"] is None and back["max_ms_reason"] == "undefined: every neuron is dead"
    assert back["rates"] == [0.5, None] and "rates_reason" in back
    assert back["nested"] == {"x": None, "x_reason": "-inf: not finite", "ok": 3}
    assert back["path"] == str(tmp_path) and back["pair"] == [1, 2.5]
    assert json.loads(to_json({"x": 1 / 3}))["x"] == 1 / 3  # full precision


def test_score_of_dead_neurons_writes_null_max_ms_with_a_reason(tmp_path):
    from vlmsae.data.store import ActivationStore

    rng = np.random.default_rng(0)
    ActivationStore.write(tmp_path / "acts", np.zeros((20, 4), np.float32))
    ActivationStore.write(tmp_path / "emb", rng.normal(size=(20, 6)).astype(np.float32))
    args = ["score", "--activations", str(tmp_path / "acts"), "--embeddings"]
    res = runner.invoke(app, [*args, str(tmp_path / "emb"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "s" / "summary.json").read_text()
    summary = json.loads(text)
    assert not re.search(r":\s*NaN", text) and summary["max_ms"] is None
    assert summary["max_ms_reason"].startswith("undefined: all 4 neurons are dead or constant")
    assert "mean - ± -" in res.output  # rounded, and '-' for undefined


# -- help, choices, defaults, flags -------------------------------------------------------


def test_help_lists_choices_and_defaults():
    train = _help("train")
    assert "<batchtopk|matryoshka|topk|relu|jumprelu>" in train
    assert "<float32|bfloat16>" in train and "[default: 4096]" in train
    cache = _help("cache")
    assert "cls | mean | all | random:N" in cache and "<float16|float32>" in cache
    assert "post_mlp_residual | post_projection" in cache
    assert "<auto|float32|bfloat16|float16>" in cache
    convert = _help("convert")
    assert "<topk|batchtopk>" in convert and "<post_mlp_residual|post_projection>" in convert
    res = runner.invoke(app, ["train", "--activations", "x", "--out", "y", "--arch", "mlp"])
    assert res.exit_code == 2 and "'mlp' is not one of" in res.output


def test_workers_default_to_the_cpus_available():
    from vlmsae.core.cpu import default_workers
    from vlmsae.encoders.cache import CacheConfig

    n = default_workers()
    assert 1 <= n <= min(len(os.sched_getaffinity(0)), 8) and CacheConfig(layers=(1,)).workers == n
    assert f"[default: {n}]" in _help("cache")


def test_boolean_options_are_flags(tmp_path):
    from vlmsae.data.store import ActivationStore

    ActivationStore.write(tmp_path / "s", np.zeros((3, 2), np.float32))
    res = runner.invoke(app, ["inspect", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["n_rows"] == 3
    checked = 0
    for command in LONG_COMMANDS + [["inspect"], ["steer"]]:
        for param in _command(command).params:
            if param.type_descriptor.annotation is bool:  # --x or --x/--no-x, no value
                assert param.is_flag, (command, param.name)
                checked += 1
    assert checked >= len(LONG_COMMANDS) + 3  # --quiet everywhere, --json, --resume, ...


def _command(path: list[str]):
    import typer

    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


# -- metrics sinks ------------------------------------------------------------------------


class FakeWriter:
    instances: list[FakeWriter] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.instances.append(self)

    def add_scalar(self, name: str, value: float, global_step: int) -> None:
        self.scalars.append((global_step, name, value))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_train_log_to_tensorboard_mirrors_metrics_jsonl(tmp_path, monkeypatch):
    from vlmsae.data.store import ActivationStore

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeWriter.instances.clear()
    rng = np.random.default_rng(0)
    ActivationStore.write(tmp_path / "acts", rng.normal(size=(256, 8)).astype(np.float32))
    args = ["train", "--activations", str(tmp_path / "acts"), "--out", str(tmp_path / "run")]
    args += ["--arch", "topk", "--expansion", "2", "--k", "2", "--steps", "6"]
    args += ["--batch-size", "32", "--log-every", "3", "--val", str(tmp_path / "acts")]
    res = runner.invoke(app, [*args, "--log-to", "tensorboard", "--quiet"])
    assert res.exit_code == 0, res.output
    (writer,) = FakeWriter.instances
    assert writer.closed and writer.log_dir == str(tmp_path / "run" / "tensorboard")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    logged = {(s, n): v for s, n, v in writer.scalars}
    assert sorted({s for s, _ in logged}) == [r["step"] for r in records] == [3, 6]
    for r in records:
        assert logged[(r["step"], "loss")] == r["loss"]
        assert logged[(r["step"], "val/r2")] == r["val"]["r2"]


def test_wandb_sink_logs_each_log_point_to_one_resumable_run(tmp_path, monkeypatch):
    from vlmsae.train.sinks import open_sinks

    calls: list[tuple] = []

    class Run:
        def log(self, scalars, step):
            calls.append(("log", step, scalars))

        def finish(self):
            calls.append(("finish",))

    def init(**kw):
        calls.append(("init", kw))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    ids = []
    for _ in range(2):  # a run and its --resume
        with open_sinks(["wandb"], tmp_path / "run", {"k": 4}) as on_step:
            on_step(1, {})  # not a log point: nothing sent
            on_step(2, {"step": 2, "loss": 0.5})
        (init_call,) = [c for c in calls if c[0] == "init"]
        ids.append(init_call[1]["id"])
        assert init_call[1]["resume"] == "allow" and init_call[1]["config"] == {"k": 4}
        assert [c for c in calls if c[0] == "log"] == [("log", 2, {"loss": 0.5})]
        assert calls[-1] == ("finish",)
        calls.clear()
    assert ids[0] == ids[1]


def test_a_missing_extra_is_a_clear_error_before_training(tmp_path, monkeypatch):
    from vlmsae.core.errors import UserError
    from vlmsae.train.sinks import flat_scalars, open_sinks

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with (
        pytest.raises(UserError, match=r"pip install 'vlmsae\[wandb\]'"),
        open_sinks(["wandb"], tmp_path / "run"),
    ):
        pytest.fail("the sink opened without its package")
    assert not (tmp_path / "run").exists()
    with (
        pytest.raises(UserError, match="choose one of tensorboard, wandb"),
        open_sinks(["mlflow"], tmp_path),
    ):
        pass
    metrics = {"step": 5, "loss": 1.5, "group_loss": [1.0, 2.0], "val": {"r2": float("nan")}}
    assert flat_scalars(metrics) == {"loss": 1.5, "group_loss/0": 1.0, "group_loss/1": 2.0}


def test_pyproject_declares_the_extras():
    text = (SRC.parent / "pyproject.toml").read_text()
    assert "tensorboard = [" in text and "wandb = [" in text


# -- toyworld build -----------------------------------------------------------------------


def test_toyworld_build_never_overwrites_models_unless_asked(tmp_path):
    from vlmsae.core.errors import UserError
    from vlmsae.toyworld import MODELS_DIR
    from vlmsae.toyworld.build import build_toyworld

    before = sorted(p.name for p in MODELS_DIR.iterdir())
    with pytest.raises(UserError, match="shipped toy models .* pass --overwrite"):
        build_toyworld()  # the default folder is the package's
    (tmp_path / "clip").mkdir()
    with pytest.raises(UserError, match=r"holds models \(clip\)"):
        build_toyworld(tmp_path)
    assert sorted(p.name for p in MODELS_DIR.iterdir()) == before
    assert "[default: runs/toyworld-models]" in _help("toyworld", "build")
