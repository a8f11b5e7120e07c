"""Infrastructure: nothing here knows about attention.

    io.py           atomic JSON writes, strict JSON, resume helpers, named file errors
    lock.py         exclusive directory lock (flock) and cleanup of orphaned temporaries
    results_dir.py  results directories: writable check, lock, settings per entry, merge/refuse
    executors.py    local (in-process or worker processes) and Ray executors for sweeps
    bench.py        ``dualform bench``: ratios against baselines timed in the same run
    rng.py          seeded construction that leaves the caller's random state untouched
    reprs.py        short reprs for result objects (tensors as ``float32[30, 9, 64]``)
    versions.py     installed package versions from their metadata (imports none of them)
    memory.py       freed heap memory handed back to the OS between the stages of a long run
"""
