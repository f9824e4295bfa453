"""One exception type for every problem a user can fix, and the guard that makes every entry point (CLI and
Snakemake scripts) print it as one line on stderr and exit 1, never a traceback."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path


class CellerError(Exception):
    """A user-facing error: the message names the file / column / value and what to do."""


def setup_logging(log_path: str | Path | None = None) -> None:
    """Log to ``log_path`` (and stderr); progress bars and warnings go to the same file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    logging.captureWarnings(True)


def run_guarded(func: Callable[[], object], *, log_path: str | Path | None = None) -> None:
    """Run ``func``; on :class:`CellerError` log and print one line and exit 1."""
    setup_logging(log_path)
    stderr_file = open(log_path, "a") if log_path else None  # noqa: SIM115 (closed at exit)
    try:
        with contextlib.redirect_stderr(stderr_file) if stderr_file else contextlib.nullcontext():
            func()
    except CellerError as e:  # printed once (not also logged to stderr); kept in the log file too
        if stderr_file:
            print(f"celler: error: {e}", file=stderr_file, flush=True)
        print(f"celler: error: {e}", file=sys.__stderr__)
        sys.exit(1)
    finally:
        if stderr_file:
            stderr_file.close()
