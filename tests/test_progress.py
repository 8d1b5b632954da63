"""Tests of the pipeline's progress line (`trapmid_tf.experiments.progress`)."""

import io

import pytest

from trapmid_tf.experiments.progress import StageProgress, format_duration


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_durations_read_as_hours_minutes_seconds():
    assert [format_duration(s) for s in (0, 12.4, 185, 3720)] == ["0s", "12s", "3m05s", "1h02m"]


def test_lines_count_stages_and_estimate_the_time_left():
    clock, stream = FakeClock(), io.StringIO()
    progress = StageProgress(4, stream=stream, clock=clock)
    with progress.stage("prior"):
        clock.now += 60
    with progress.stage("attack"):
        clock.now += 30
    progress.close()
    # After 2 of 4 stages in 90 s, the mean of 45 s a stage leaves 2 x 45 s = 1m30s.
    assert stream.getvalue().splitlines() == [
        "[--------------------] 0/4 stages, 0s spent: prior",
        "[#####---------------] 1/4 stages, 1m00s spent, about 3m00s left: attack",
        "[##########----------] 2/4 stages, 1m30s spent, about 1m30s left: done",
    ]
    assert progress.seconds == {"prior": 60.0, "attack": 30.0}


def test_a_failed_stage_is_not_counted_finished():
    progress = StageProgress(2, stream=io.StringIO(), clock=FakeClock())
    with pytest.raises(RuntimeError), progress.stage("prior"):
        raise RuntimeError("out of memory")
    assert progress.finished == 0
    assert progress.seconds == {}


def test_more_stages_than_announced_is_an_error():
    progress = StageProgress(1, stream=io.StringIO(), clock=FakeClock())
    with progress.stage("only"):
        pass
    with pytest.raises(ValueError, match="beyond the 1 stages"), progress.stage("extra"):
        pass
    with pytest.raises(ValueError, match="`total` must be >= 1 stage; received 0"):
        StageProgress(0)


def test_a_terminal_line_is_redrawn_in_place():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = StageProgress(1, stream=stream, clock=FakeClock())
    with progress.stage("only"):
        pass
    progress.close()
    assert stream.getvalue().count("\r\033[K") == 2 and stream.getvalue().endswith("done\n")
