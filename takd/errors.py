"""How every command line ends on an expected failure: one `error: ...` line and an exit code, never a traceback.

ConfigError (bad input, caught before anything is written or submitted) exits 2; a full disk, an exceeded quota, a
read-only or forbidden path exit 1 with the path and what to do. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable

from takd.config import ConfigError


def os_error_line(err: OSError) -> str | None:
    """One line for the operational OS errors a user can fix, else None."""
    where = err.filename or "a file"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device (or the quota is exceeded) while writing {where}: free space, or put "
                "runs (--run-dir, $TAKD_RUNS) and caches ($TAKD_HOME, $HF_HOME) on a larger file system")
    if err.errno == errno.EROFS:
        return (f"{where} is on a read-only file system (inside jobs on some clusters HOME and PROJECT are): put "
                "runs and caches on $SCRATCH")
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where}; choose a directory you can write"
    return None


def cli(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's main(argv) so expected failures print one line (see the module docstring)."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            line = os_error_line(err)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            return 1

    return wrapped
