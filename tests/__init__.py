
from hypothesis import HealthCheck, settings

# Property tests run on loaded CI machines (and under PyPy's warm-up): no per-example
# deadline and no "too slow" health check, so their outcome depends only on the code.
settings.register_profile("arp", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("arp")


def _own_paths_out_of_pythonpath() -> None:
    """Drop this interpreter's own library directories from PYTHONPATH.

    ``trial -j`` starts its workers with PYTHONPATH set to the whole ``sys.path``,
    and every process a test starts inherits it.  Another Python started from a test
    (``/usr/bin/python3`` running Debian's ``docker-compose``, a fake agent's
    ``#!/usr/bin/env python3``) would then import this interpreter's standard
    library: PyPy's, under CPython, fails at once.  Children running this
    interpreter find those directories by themselves; the worktree entries stay.
    """
    import os
    import sys

    value = os.environ.get("PYTHONPATH")
    if not value:
        return
    prefixes = {os.path.join(os.path.realpath(p), "") for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    kept = [
        entry
        for entry in value.split(os.pathsep)
        if not any(os.path.join(os.path.realpath(entry), "").startswith(p) for p in prefixes)
    ]
    os.environ["PYTHONPATH"] = os.pathsep.join(kept)


_own_paths_out_of_pythonpath()
