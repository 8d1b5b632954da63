"""One progress line over the stages of a long run, with the time spent and an estimate left."""

import contextlib
import sys
import time

BAR_WIDTH = 20


def format_duration(seconds):
    """`seconds` as "1h02m", "3m05s" or "12s"."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


class StageProgress:
    """Draws `[####----] 7/24 stages, 3m12s spent, about 8m left: <stage>` as stages start,
    and keeps the seconds each stage took (`seconds`).

    The estimate of the time left is the mean duration of the stages finished so far times the
    number not yet finished: rough when stages differ in cost (a reused stage takes a second, a
    GAN prior minutes), and absent until one stage has finished. On a terminal the line is
    redrawn in place; elsewhere (a log file) each stage gets a line of its own.

    Args:
        total: The number of stages the run will go through (>= 1).
        stream: Where to draw (standard error by default).
        clock: Seconds as a float, monotonic (for tests).
    """

    def __init__(self, total, stream=None, clock=time.monotonic):
        if int(total) < 1:
            raise ValueError(f"`total` must be >= 1 stage; received {total}.")
        self.total = int(total)
        self.stream = stream or sys.stderr
        self.clock = clock
        self.finished = 0
        # Seconds each finished stage took, by name (a run's profile: results.json).
        self.seconds = {}
        self._begin = clock()
        self._in_place = hasattr(self.stream, "isatty") and self.stream.isatty()

    @contextlib.contextmanager
    def stage(self, name):
        """Context of one stage: draws the line naming it, counts it finished on exit."""
        if self.finished >= self.total:
            raise ValueError(
                f"stage {name!r} is beyond the {self.total} stages this progress was made for."
            )
        self._draw(name)
        begin = self.clock()
        yield
        self.seconds[name] = round(self.clock() - begin, 1)
        self.finished += 1

    def close(self, message="done"):
        """Draws the final line (all stages, the total time) and ends it."""
        self._draw(message)
        if self._in_place:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, name):
        """The progress line for the stage `name` now."""
        spent = self.clock() - self._begin
        filled = BAR_WIDTH * self.finished // self.total
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        text = f"[{bar}] {self.finished}/{self.total} stages, {format_duration(spent)} spent"
        if 0 < self.finished < self.total:
            left = spent / self.finished * (self.total - self.finished)
            text += f", about {format_duration(left)} left"
        return f"{text}: {name}"

    def _draw(self, name):
        text = self.line(name)
        if self._in_place:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
