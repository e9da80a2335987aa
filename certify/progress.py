"""Progress display for long runs (tqdm), on a terminal only.

One switch for the whole process: :func:`configure` (the CLI calls it with ``--quiet``); a bar is
shown only when it is enabled *and* stderr is a terminal, so ``--quiet``, redirected / piped output
and JSON output on stdout never carry progress lines.  Library callers get no bars unless they call
``configure(enabled=True)``.

Long-running functions take a ``progress`` argument: ``None`` (silent) or an object from
:func:`bar`; they only call ``update``, ``set_description_str``, ``set_postfix_str`` and ``close``
on it, so any tqdm-like object works.
"""

from __future__ import annotations

import sys

_STATE = {"enabled": False}


def configure(enabled: bool) -> None:
    """Turn progress bars on (still only on a terminal) or off for this process."""
    _STATE["enabled"] = bool(enabled)


def active() -> bool:
    """Whether a bar created now would be shown: enabled and stderr is a terminal."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return _STATE["enabled"] and tty


class Silent:
    """A bar that shows nothing (progress off): the same methods as a tqdm bar."""

    n = 0
    total = None

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_description_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def reset(self, total=None) -> None:
        self.n, self.total = 0, total

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: float | None = None, desc: str = "", unit: str = "it", **kwargs):
    """A tqdm bar on stderr when :func:`active`, else a :class:`Silent` one."""
    if not active():
        return Silent()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)
