"""Unit tests of run_job against a fake Jobs API client driven by a fake clock."""

from dataclasses import dataclass, field

import pytest
from ray.job_submission import JobStatus

from resources.errors import RayJobError
from resources.jobs import (
    AGENT_RETRY_INTERVAL_S,
    AGENT_WAIT_S,
    JOB_POLL_INTERVAL_S,
    LOG_TAIL_LINES,
    JobOutcome,
    run_job,
    without_terminal_codes,
)

JOB_ID = "train-1997-10-01"


class FakeClock:
    """Monotonic time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class FakeJobInfo:
    message: str | None


@dataclass
class FakeJobClient:
    """A JobSubmissionClient whose job status and log follow timelines of (seconds after submission, value)."""

    clock: FakeClock
    statuses: list[tuple[float, JobStatus]]
    logs: list[tuple[float, str]] = field(default_factory=list)
    message: str | None = None
    submitted: list[dict[str, object]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    submitted_at: float = 0.0
    # Errors that the next submissions raise, in order, before one succeeds.
    submit_errors: list[Exception] = field(default_factory=list)

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, object] | None) -> str:
        if self.submit_errors:
            raise self.submit_errors.pop(0)
        self.submitted.append({"entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env})
        self.submitted_at = self.clock()
        return submission_id

    def _at(self, timeline: list[tuple[float, object]], default: object) -> object:
        elapsed = self.clock() - self.submitted_at
        value = default
        for moment, entry in timeline:
            if moment <= elapsed:
                value = entry
        return value

    def get_job_status(self, job_id: str) -> JobStatus:
        assert job_id == JOB_ID
        if self.stopped:
            return JobStatus.STOPPED
        return self._at(self.statuses, JobStatus.PENDING)  # type: ignore[return-value]

    def get_job_logs(self, job_id: str) -> str:
        assert job_id == JOB_ID
        return self._at(self.logs, "")  # type: ignore[return-value]

    def get_job_info(self, job_id: str) -> FakeJobInfo:
        assert job_id == JOB_ID
        return FakeJobInfo(message=self.message)

    def stop_job(self, job_id: str) -> bool:
        assert job_id == JOB_ID
        self.stopped.append(job_id)
        return True


def run(client: FakeJobClient, clock: FakeClock, lines: list[str], **overrides: object) -> JobOutcome:
    arguments: dict[str, object] = {
        "entrypoint": "python -m training_pipelines.training.ray_job request.json",
        "submission_id": JOB_ID,
        "on_log_line": lines.append,
        "clock": clock,
        "sleep": clock.sleep,
    }
    arguments.update(overrides)
    return run_job(client, **arguments)  # type: ignore[arg-type]


def test_success_returns_clock_timings() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.PENDING), (3, JobStatus.RUNNING), (10, JobStatus.SUCCEEDED)])

    outcome = run(client, clock, [])

    assert outcome == JobOutcome(job_id=JOB_ID, queued_s=3.0, running_s=7.0)
    assert client.stopped == []
    assert set(clock.sleeps) == {JOB_POLL_INTERVAL_S}


def test_job_done_at_first_poll() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.SUCCEEDED)])

    outcome = run(client, clock, [])

    assert outcome.queued_s == 0.0
    assert outcome.running_s == 0.0
    assert clock.sleeps == []


# What Ray 2.60's JobSubmissionClient raises when the head's dashboard agent has not registered.
NO_AGENT = "Request failed with status code 500: No available agent to submit job, please try again later.."


def test_submit_retries_until_agent_available() -> None:
    clock = FakeClock()
    client = FakeJobClient(
        clock, statuses=[(0, JobStatus.SUCCEEDED)], submit_errors=[RuntimeError(NO_AGENT), RuntimeError(NO_AGENT)]
    )

    outcome = run(client, clock, [])

    assert outcome.job_id == JOB_ID
    assert len(client.submitted) == 1
    assert clock.sleeps == [AGENT_RETRY_INTERVAL_S, AGENT_RETRY_INTERVAL_S]


def test_submit_gives_up_after_agent_wait() -> None:
    clock = FakeClock()
    tries = int(AGENT_WAIT_S / AGENT_RETRY_INTERVAL_S) + 5
    client = FakeJobClient(
        clock, statuses=[(0, JobStatus.SUCCEEDED)], submit_errors=[RuntimeError(NO_AGENT) for _ in range(tries)]
    )

    with pytest.raises(RuntimeError, match="No available agent"):
        run(client, clock, [])

    assert client.submitted == []
    assert sum(clock.sleeps) == pytest.approx(AGENT_WAIT_S)


def test_submit_other_error_not_retried() -> None:
    clock = FakeClock()
    client = FakeJobClient(
        clock, statuses=[(0, JobStatus.SUCCEEDED)], submit_errors=[RuntimeError("Request failed with status code 400")]
    )

    with pytest.raises(RuntimeError, match="status code 400"):
        run(client, clock, [])

    assert clock.sleeps == []


def test_submit_passes_env_vars() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.SUCCEEDED)])

    run(client, clock, [], env_vars={"TRAINING_SEED": "7"})

    assert client.submitted[0]["submission_id"] == JOB_ID
    assert client.submitted[0]["runtime_env"] == {"env_vars": {"TRAINING_SEED": "7"}}
    assert client.submitted[0]["entrypoint"] == "python -m training_pipelines.training.ray_job request.json"


def test_submit_without_env_vars() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.SUCCEEDED)])

    run(client, clock, [])

    assert client.submitted[0]["runtime_env"] is None


def test_each_log_line_sent_once() -> None:
    clock = FakeClock()
    client = FakeJobClient(
        clock,
        statuses=[(0, JobStatus.RUNNING), (4, JobStatus.SUCCEEDED)],
        logs=[(0, ""), (1, "epoch 1\n"), (2, "epoch 1\nepoch 2\n"), (4, "epoch 1\nepoch 2\nepoch 3\ndone\n")],
    )
    lines: list[str] = []

    run(client, clock, lines)

    assert lines == ["epoch 1", "epoch 2", "epoch 3", "done"]


def test_partial_log_line_sent_whole() -> None:
    clock = FakeClock()
    client = FakeJobClient(
        clock,
        statuses=[(0, JobStatus.RUNNING), (2, JobStatus.SUCCEEDED)],
        logs=[(0, "epoch 1\nepo"), (1, "epoch 1\nepoch 2\n")],
    )
    lines: list[str] = []

    run(client, clock, lines)

    assert lines == ["epoch 1", "epoch 2"]


def test_failed_job_raises_with_log_tail() -> None:
    clock = FakeClock()
    log = "".join(f"line {number}\n" for number in range(LOG_TAIL_LINES + 10)) + "ValueError: bad batch\n"
    client = FakeJobClient(
        clock,
        statuses=[(0, JobStatus.RUNNING), (2, JobStatus.FAILED)],
        logs=[(2, log)],
        message="Job entrypoint command failed with exit code 1",
    )
    lines: list[str] = []

    with pytest.raises(RayJobError) as caught:
        run(client, clock, lines)

    message = str(caught.value)
    assert caught.value.status == "FAILED"
    assert caught.value.job_id == JOB_ID
    assert "Job entrypoint command failed with exit code 1" in message
    assert "ValueError: bad batch" in message
    assert f"line {LOG_TAIL_LINES + 9}" in message
    assert "line 0\n" not in message
    assert len(caught.value.log_tail.splitlines()) == LOG_TAIL_LINES
    assert len(lines) == LOG_TAIL_LINES + 11


def test_failed_job_without_message() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.FAILED)], message=None)

    with pytest.raises(RayJobError) as caught:
        run(client, clock, [])

    assert "no message from Ray" in str(caught.value)


def test_stopped_job_raises() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.RUNNING), (1, JobStatus.STOPPED)], message="stopped")

    with pytest.raises(RayJobError) as caught:
        run(client, clock, [])

    assert caught.value.status == "STOPPED"


def test_timeout_stops_job_and_raises() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.RUNNING)], logs=[(0, "epoch 1\n")])

    with pytest.raises(RayJobError) as caught:
        run(client, clock, [], timeout_s=10.0)

    assert caught.value.status == "TIMED_OUT"
    assert "still running after 10 s" in str(caught.value)
    assert "epoch 1" in str(caught.value)
    assert JOB_ID in client.stopped
    assert clock.now - 100.0 <= 10.0 + 2 * JOB_POLL_INTERVAL_S


def test_timeout_counts_queue_time() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.PENDING)])

    with pytest.raises(RayJobError) as caught:
        run(client, clock, [], timeout_s=5.0)

    assert caught.value.status == "TIMED_OUT"
    assert JOB_ID in client.stopped


def test_interrupt_stops_job_and_propagates() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.RUNNING)])

    def interrupted_sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(client, clock, [], sleep=interrupted_sleep)

    assert client.stopped == [JOB_ID]


def test_callback_error_stops_job() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.RUNNING)], logs=[(0, "epoch 1\n")])

    def failing_callback(line: str) -> None:
        raise RuntimeError("log sink closed")

    with pytest.raises(RuntimeError, match="log sink closed"):
        run(client, clock, [], on_log_line=failing_callback)

    assert client.stopped == [JOB_ID]


def test_interrupt_after_end_skips_stop() -> None:
    clock = FakeClock()
    client = FakeJobClient(clock, statuses=[(0, JobStatus.RUNNING), (1, JobStatus.SUCCEEDED)])

    def interrupted_sleep(seconds: float) -> None:
        clock.sleep(seconds)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(client, clock, [], sleep=interrupted_sleep)

    assert client.stopped == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "\x1b[36m(RayTrainWorker pid=14783)\x1b[0m Moving model to device: cpu",
            "(RayTrainWorker pid=14783) Moving model to device: cpu",
        ),
        ("\x1b[33m(raylet)\x1b[0m \x1b[1;31mWARNING\x1b[0m", "(raylet) WARNING"),
        ("\x1b[2K\x1b[?25lprogress", "progress"),
        ("plain [36m text", "plain [36m text"),
    ],
)
def test_terminal_codes_removed(line: str, expected: str) -> None:
    assert without_terminal_codes(line) == expected


def test_failed_job_tail_without_terminal_codes() -> None:
    clock = FakeClock()
    client = FakeJobClient(
        clock,
        statuses=[(0.0, JobStatus.RUNNING), (2.0, JobStatus.FAILED)],
        logs=[(0.0, "\x1b[36m(RayTrainWorker pid=7)\x1b[0m loss nan\n")],
        message="Job entrypoint command failed with exit code 1",
    )
    lines: list[str] = []

    with pytest.raises(RayJobError) as caught:
        run(client, clock, lines)

    assert lines == ["(RayTrainWorker pid=7) loss nan"]
    assert "\x1b" not in str(caught.value)
    assert "(RayTrainWorker pid=7) loss nan" in str(caught.value)
