"""A SIGTERM that arrives while `lms-webhooks run` is still starting (importing, reading its
config) is kept for the running service instead of killing the process by the signal's
default action: a supervisor that stops a replica it has just started sees it exit 0, as at
any other time, not die by the signal.

Installed first thing by the command's entry point, before anything heavy is imported; the
service's event loop takes the signal over once it runs (`cli.serve`), and every other
command gives it back its default action (`restore`), a SIGTERM kept meanwhile included.
Standard library only, so that installing it costs nothing.
"""

from __future__ import annotations

import signal
from types import FrameType

_kept: list[int] = []


def _keep(signum: int, frame: FrameType | None) -> None:
    _kept.append(signum)


def install() -> None:
    signal.signal(signal.SIGTERM, _keep)


def arrived() -> bool:
    """A SIGTERM came before the event loop took the signal over."""
    return bool(_kept)


def restore() -> None:
    """The default action again, for a command that is not the service; a SIGTERM kept
    meanwhile acts now."""
    if signal.getsignal(signal.SIGTERM) is _keep:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if _kept:
            signal.raise_signal(signal.SIGTERM)
