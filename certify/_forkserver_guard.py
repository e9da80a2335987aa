"""Imported only as a fork-server preload by :mod:`certify.batch`: the fork server that starts the
batch's unit processes asks the kernel to SIGKILL it when the batch process dies (Linux
``prctl(PR_SET_PDEATHSIG)``), instead of lingering for seconds after a ``kill -9`` of its parent.

Importing it anywhere else does nothing (it acts only inside a ``multiprocessing`` fork server).
"""

import sys

if "multiprocessing.forkserver" in sys.modules and sys.argv[:1] == ["-c"]:
    from .batch import _pdeathsig

    _pdeathsig()
