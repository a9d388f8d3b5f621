"""One thread pool for the round trips a single event makes side by side (AWS calls are I/O).

Module level, so a warm Lambda container reuses it across invocations.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

io_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sdpipe-io")
