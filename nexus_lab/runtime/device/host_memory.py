"""Host-memory (glibc malloc) settings for processes that run torch on the cpu."""

from __future__ import annotations

__all__ = ["MALLOC_THRESHOLD", "keep_freed_memory"]

#: glibc's trim and mmap thresholds for processes that run torch on the cpu (bytes); see ``keep_freed_memory``.
MALLOC_THRESHOLD = 134217728


def keep_freed_memory(threshold: int = MALLOC_THRESHOLD) -> bool:
    """Make glibc keep freed blocks of up to ``threshold`` bytes in this process's heap (``mallopt``), so a
    forward pass reuses the previous batch's activation memory instead of mapping it afresh.

    distributed's nanny starts workers with a 64 KiB trim threshold, and any explicit trim threshold also freezes
    glibc's mmap threshold at 128 KiB: every larger activation is then mapped and unmapped per forward pass, and
    the page faults made the zoo's conv net 2-3x slower per item. ``nexus_lab.start`` sets both in the workers'
    environment (``controller.WORKER_MALLOC_ENV``); this covers clusters started elsewhere. Returns False where it
    does not apply (not glibc).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_trim_threshold, int(threshold))) and bool(
            libc.mallopt(m_mmap_threshold, int(threshold)))
    except (OSError, AttributeError):  # another C library (musl): it has its own allocator policy
        return False
