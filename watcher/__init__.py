"""nextmv-watcher: track run folders in Nextmv Cloud, exactly once."""

import sys

__version__ = "0.2.0"

if "structlog" not in sys.modules and "rich" not in sys.modules:
    # structlog imports rich, when it is installed, for its console renderer's tracebacks. watcher.logs
    # formats every trace before rendering, so they are never used, and importing rich (and pygments)
    # took 60-80 ms of every process's start. structlog is imported here without it (`import rich`
    # fails while None stands for it); `sync` imports rich itself for its progress bar.
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
