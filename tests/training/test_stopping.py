"""Stopping on SIGTERM and SIGINT (training/stopping.py): the step in progress finishes,
last.safetensors holds it, the CLI says so in one line and exits 128 + the signal; resuming then
gives the files of an uninterrupted run, byte for byte, whether the signal came mid-step, during a
dev evaluation, a probe or the final predictions. A second signal ends the process at once.
Under torchrun (two gloo processes here) the ranks stop after the same step, and a lost rank
stops the others within train.ddp_timeout_s, named."""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_run_state import REPO, TOTAL_STEPS, assert_same_run, minbert, reference_run, run_args, run_to_end  # noqa: F401 (a fixture)

from minbert import distributed
from minbert.config import load_config
from minbert.run_files import LAST, RunError, load_checkpoint
from minbert.training import TrainingStopped, TrainOptions, train
from minbert.training import loop, probes, recipe
from minbert.training.stopping import Stopper, StopRequested

QUIET = TrainOptions(progress=False)


def send_self(signum: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), signum)


# ---------------------------------------------------------------------------------------
# The Stopper alone


def test_a_signal_inside_a_held_section_is_raised_when_it_ends():
    with Stopper(immediate=True) as stopper:
        done = []
        with pytest.raises(StopRequested):
            with stopper.hold():
                send_self()
                done.append("the rest of the section ran")
        assert done and stopper.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back


def test_a_signal_outside_a_held_section_is_raised_at_once():
    with Stopper(immediate=True):
        with pytest.raises(StopRequested):
            send_self(signal.SIGINT)
            time.sleep(5)  # never reached: the handler raises first
            pytest.fail("the stop was not raised")


def test_without_immediate_the_stop_waits_for_the_boundary():
    with Stopper(immediate=False) as stopper:
        send_self()
        time.sleep(0.01)  # handlers run between bytecodes: it has run by now, and raised nothing
        assert stopper.requested
        with pytest.raises(StopRequested):
            stopper.check_boundary()


def test_a_second_signal_ends_the_process_at_once(tmp_path):
    """The first signal arrives in a long held section (a checkpoint being written, say); the
    second ends the process then, by the signal's default action, without waiting for it."""
    code = textwrap.dedent("""
        import sys, time
        from minbert.training.stopping import Stopper
        with Stopper(immediate=True) as stopper:
            with stopper.hold():
                print("held", flush=True)
                time.sleep(60)
        """)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.stdout.readline() == "held\n"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None, "the first signal must wait for the held section"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM and time.monotonic() - sent < 5


# ---------------------------------------------------------------------------------------
# A real `minbert train` process, stopped and resumed (test_run_state's config and reference)


# Seeded once: two moments inside the first phase's steps and one in the second phase.
CLI_STOPS = [(signal.SIGTERM, k) for k in random.Random(21).sample(range(3, TOTAL_STEPS - 6), 2)] + [(signal.SIGINT, 38)]


@pytest.mark.slow
@pytest.mark.parametrize("signum, at_step", CLI_STOPS)
def test_signal_stops_the_cli_after_a_step_and_resume_equals_uninterrupted(signum, at_step, reference_run,
                                                                          tiny_checkpoint, small_data_dir, tmp_path):  # fmt: skip
    out, args = tmp_path / "run", run_args(tiny_checkpoint, small_data_dir)
    proc = minbert("train", "--out", out, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, deadline = out / "steps.jsonl", time.time() + 120
    while proc.poll() is None and time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < at_step):
        time.sleep(0.002)
    sent = time.monotonic()
    proc.send_signal(signum)
    err = proc.communicate(timeout=60)[1]
    stop_to_exit = time.monotonic() - sent
    assert proc.returncode == 128 + signum, err
    line = err.strip().splitlines()[-1]
    step = load_checkpoint(out / LAST).progress.step
    assert step >= at_step and len(log.read_text().splitlines()) == step  # every step done is logged, no more
    assert line.startswith(f"minbert: {signal.Signals(signum).name}: stopped ") and f"{out / LAST} holds step {step}" in line
    print(f"stop to exit: {stop_to_exit:.2f} s (the run's own count: {line.split('stopped ')[1].split(' s')[0]} s)")
    resume = shlex.split(line.split("continue with: ")[1])
    assert resume[:2] == ["minbert", "train"] and "--resume" in resume
    done = run_to_end(*resume[1:])
    assert done.returncode == 0, done.stderr
    assert_same_run(reference_run, out)


# ---------------------------------------------------------------------------------------
# In one process, at exact moments: mid-step, inside an evaluation, inside the final predictions


def stop_config(tiny_checkpoint, small_data_dir, cache, *extra):
    """test_run_state's run, with probes every 5 steps of the first phase (on 16 dev examples)."""
    return load_config(None, [
        f"model.checkpoint={tiny_checkpoint}", f"data.dir={small_data_dir}", f"data.cache_dir={cache}",
        "train.batch_size=8", "train.eval_batch_size=8", "train.threads=1", "train.checkpoint_every_steps=4",
        "train.log_every_steps=3", "train.eval_subset=16",
        "train.phases=[{name: rr, epochs: 2, lr: 2e-3, eval_every_steps: 5}, {name: sst_only, tasks: [sst], epochs: 1, lr: 1e-3}]",
        *extra,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def stop_reference(tiny_checkpoint, small_data_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("stop_reference")
    cfg = stop_config(tiny_checkpoint, small_data_dir, base / "cache")
    train(cfg, base / "run", QUIET)
    return cfg, base / "run"


def assert_same_probes(a: Path, b: Path) -> None:
    drop = ("elapsed_s", "eval_s")
    probes_of = lambda run: [{k: v for k, v in json.loads(line).items() if k not in drop}  # noqa: E731
                             for line in (run / "evals.jsonl").read_text().splitlines()]  # fmt: skip
    assert probes_of(a) == probes_of(b)


def signal_on_eval_forward(monkeypatch, module, name: str, nth_call: int, batch: int = 2) -> None:
    """`module.name` (an evaluation) sends SIGTERM from inside its `batch`-th forward, on its
    `nth_call`-th call: the signal lands in the middle of a real evaluation."""
    original, calls = getattr(module, name), []

    def wrapped(model, *args, **kwargs):
        calls.append(1)
        if len(calls) != nth_call:
            return original(model, *args, **kwargs)
        forwards = []

        def hook(*_):
            forwards.append(1)
            if len(forwards) == batch:
                send_self()

        handle = model.bert.register_forward_hook(hook)
        try:
            return original(model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(module, name, wrapped)


def signal_in_step(monkeypatch, at_step: int) -> None:
    """SIGTERM inside the forward of step at_step + 1: that step is finished, then the run stops."""
    original = loop.step_loss

    def wrapped(run, task, indices, phase, *rest):
        if run.progress.step == at_step:
            send_self()
        return original(run, task, indices, phase, *rest)

    monkeypatch.setattr(loop, "step_loss", wrapped)


# Seeded once: a step; one of the 3 epoch-end dev evaluations; one of the first 6 evaluations of
# the probes (at steps 5, 10, 15 of each first-phase epoch: the probe set, and the full dev sets
# when it improves); a forward of the final predictions.
MOMENTS = random.Random(2112)
IN_PROCESS_STOPS = [("mid-step", MOMENTS.randrange(1, TOTAL_STEPS - 1)), ("epoch-end evaluation", MOMENTS.randint(1, 3)),
                    ("probe", MOMENTS.randint(1, 6)), ("final predictions", MOMENTS.randint(2, 12))]  # fmt: skip


@pytest.mark.parametrize("moment, which", IN_PROCESS_STOPS)
def test_a_stop_at_any_moment_resumes_to_the_uninterrupted_files(moment, which, stop_reference, monkeypatch, tmp_path):
    cfg, reference = stop_reference
    out = tmp_path / "run"
    if moment == "mid-step":
        signal_in_step(monkeypatch, which)
    elif moment == "epoch-end evaluation":
        signal_on_eval_forward(monkeypatch, loop, "evaluate_dev", which)
    elif moment == "probe":
        signal_on_eval_forward(monkeypatch, probes, "evaluate_dev", which)
    else:
        signal_on_eval_forward(monkeypatch, recipe, "write_outputs", 1, batch=which)
    with pytest.raises(TrainingStopped) as stopped:
        train(cfg, out, QUIET)
    monkeypatch.undo()
    stop = stopped.value
    assert stop.signum == signal.SIGTERM and stop.exit_status == 143 and stop.checkpoint == out / LAST
    held = load_checkpoint(out / LAST).progress
    assert held.step == stop.step
    if moment == "mid-step":
        assert stop.step == which + 1  # the step the signal came in was finished, and no other
    assert held.probe_due == (moment == "probe")
    if moment == "final predictions":
        assert not (out / "metrics.json").exists() and held.phase == 2  # all trained; predictions unfinished
    train(cfg, out, TrainOptions(progress=False, resume=True))
    assert_same_run(reference, out)
    assert_same_probes(reference, out)


def test_a_stop_before_the_first_step_keeps_what_was_there(stop_reference, monkeypatch, tmp_path):
    cfg, _ = stop_reference
    original = recipe.build_model

    def build_then_signal(cfg):
        built = original(cfg)
        send_self()
        return built

    monkeypatch.setattr(recipe, "build_model", build_then_signal)
    with pytest.raises(TrainingStopped, match="no checkpoint had been written yet") as stopped:
        train(cfg, tmp_path / "run", QUIET)
    assert stopped.value.checkpoint is None and not (tmp_path / "run" / LAST).exists()


# ---------------------------------------------------------------------------------------
# Two gloo processes: a stop agreed at a step boundary; a lost rank named within the timeout


def ddp_cfg(tiny_checkpoint, small_data_dir, cache, *extra):
    """Two epochs of 18 steps; last.safetensors at each epoch's end and at flush points (every 3
    steps) once 4 steps have passed since the last one."""
    return stop_config(tiny_checkpoint, small_data_dir, cache, "train.eval_subset=null",
                       "train.phases=[{name: rr, epochs: 2, lr: 2e-3}]", *extra)  # fmt: skip


FAULT_AFTER = 20  # rank 1 meets its fault in step 21's forward; the last checkpoint is the epoch end's, 18
FAULTS = {"sigterm": signal.SIGTERM, "kill": signal.SIGKILL, "hang": signal.SIGSTOP}


def _ddp_worker(rank, world, port, cfg, out, report, fault):
    """One rank of a two-process run; rank 1 meets `fault` (a signal to itself) in step 21. The
    outcome goes to report/rank{r}.json."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    original = loop.step_loss

    def faulty(run, task, indices, phase, *rest):
        if rank == 1 and run.progress.step == FAULT_AFTER:
            Path(report, "fault_at").write_text(str(time.time()))
            os.kill(os.getpid(), FAULTS[fault])
        return original(run, task, indices, phase, *rest)

    if fault:
        loop.step_loss = faulty
    started, outcome = time.monotonic(), {}
    try:
        train(cfg, out, TrainOptions(progress=False, device="cpu", overwrite=True))
        outcome = {"finished": True}
    except TrainingStopped as e:
        outcome = {"stopped_at": e.step, "message": str(e)}
    except RunError as e:
        outcome = {"error": str(e)}
    outcome["seconds"], outcome["ended_at"] = round(time.monotonic() - started, 2), time.time()
    Path(report, f"rank{rank}.json").write_text(json.dumps(outcome))
    if fault:  # a peer may be gone: no goodbye through the group
        os._exit(0)
    torch.distributed.destroy_process_group()


def two_ranks(cfg, out: Path, fault: str | None, report: Path) -> dict[int, dict]:
    """Each rank's outcome (a rank that was killed has none)."""
    from test_distributed import free_port

    report.mkdir(parents=True)
    ctx, port = mp.get_context("spawn"), free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, cfg, out, report, fault)) for r in range(2)]
    for p in procs:
        p.start()
    procs[0].join(timeout=180)
    for p in procs:  # a stopped (SIGSTOP) rank 1 is still there
        if p.is_alive():
            p.kill()
        p.join()
    outcome = {r: json.loads((report / f"rank{r}.json").read_text()) for r in range(2) if (report / f"rank{r}.json").exists()}
    if (report / "fault_at").exists():
        for o in outcome.values():
            o["after_fault_s"] = round(o["ended_at"] - float((report / "fault_at").read_text()), 2)
    return outcome


def finished(outcome: dict[int, dict]) -> bool:
    return len(outcome) == 2 and all(o.get("finished") for o in outcome.values())


@pytest.fixture(scope="module")
def ddp_reference(tiny_checkpoint, small_data_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp_reference")
    cfg = ddp_cfg(tiny_checkpoint, small_data_dir, base / "cache")
    outcome = two_ranks(cfg, base / "run", None, base / "report")
    assert finished(outcome), outcome
    return base / "cache", base / "run"


def assert_same_ddp_files(a: Path, b: Path) -> None:
    for name in ("metrics.json", "steps.jsonl", "sst-dev-output.csv", "para-test-output.csv", "sts-dev-output.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_ranks_agree_to_stop_after_the_same_step_and_resume(ddp_reference, tiny_checkpoint, small_data_dir, tmp_path):
    cache, reference = ddp_reference
    cfg, out = ddp_cfg(tiny_checkpoint, small_data_dir, cache), tmp_path / "run"
    outcome = two_ranks(cfg, out, "sigterm", tmp_path / "report")
    # Rank 1 was signalled in step 21; rank 0 was not, and stops after the same step.
    assert outcome[0]["stopped_at"] == outcome[1]["stopped_at"] == FAULT_AFTER + 1, outcome
    assert load_checkpoint(out / LAST).progress.step == FAULT_AFTER + 1  # written by rank 0
    assert finished(two_ranks(cfg, out, None, tmp_path / "resumed"))
    assert_same_ddp_files(reference, out)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_lost_rank_stops_the_other_within_the_timeout_naming_it(fault, ddp_reference, tiny_checkpoint, small_data_dir,
                                                                 tmp_path):  # fmt: skip
    """kill: rank 1 dies (its sockets close: the others fail at once); hang: rank 1 stops
    answering (SIGSTOP: the others wait for the timeout)."""
    cache, reference = ddp_reference
    timeout = 6
    cfg, out = ddp_cfg(tiny_checkpoint, small_data_dir, cache, f"train.ddp_timeout_s={timeout}"), tmp_path / "run"
    outcome = two_ranks(cfg, out, fault, tmp_path / "report")
    assert 1 not in outcome  # it never got to report
    message = outcome[0]["error"]
    assert message.startswith(f"rank 1 of 2 is lost: a collective failed after step {FAULT_AFTER} ("), message
    assert message.endswith(f"{out / LAST} (step 18) is intact; start the run again with --resume"), message
    # The collective's wait (at most the timeout) and the roll call (at most min(10 s, timeout)),
    # with 5 s for a busy machine:
    waited = outcome[0]["after_fault_s"]
    print(f"{fault}: rank 0 stopped {waited:.1f} s after rank 1's fault (timeout {timeout} s): {message}")
    assert waited < timeout + min(10, timeout) + 5
    resumed = two_ranks(cfg, out, None, tmp_path / "resumed")
    assert finished(resumed), resumed
    assert_same_ddp_files(reference, out)
