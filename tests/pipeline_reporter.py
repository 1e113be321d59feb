"""A stand-in for the worker's Reporter when a test runs ``pruning_worker.pipeline.run`` in
its own process: it keeps the phases and the log lines, and never stops the job."""

from __future__ import annotations


class PipelineReporter:
    interval_s = 1.0

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.lines: list[tuple[str, str]] = []  # (level, message)

    def progress(self, progress, force: bool = False) -> None:
        pass

    def log(self, message: str, level: str = "INFO") -> None:
        self.lines.append((level, message))

    def phase(self, phase: str, message: str) -> None:
        self.phases.append(str(phase))

    def should_stop(self) -> bool:
        return False

    def timings(self) -> dict[str, float]:
        return {}

    def measured(self, result) -> None:
        pass

    def check_between_steps(self) -> None:
        pass
