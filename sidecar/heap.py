"""Returning the C heap's free memory to the operating system after a load.

Role: a load builds a namespace's view from pages of JSON documents and buckets; their
temporaries, and the tables the indexes outgrew, are freed when it ends, but the C allocator
keeps freed heap memory resident (glibc raises its mmap threshold after large frees, so large
tables come from the heap, which it trims only at its top). ``release_free_heap`` asks glibc
(``malloc_trim``) to give every free page back, so the resident size is what the view holds.
Elsewhere (another C library) it does nothing.

It must not free or move any object (it only returns pages no object uses), nor fail a load.
"""

from __future__ import annotations

import ctypes

__all__ = ["release_free_heap"]


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; tell whether the C library could."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
