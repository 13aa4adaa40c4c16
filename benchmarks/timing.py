"""The benchmarks' one timing rule: the median wall time of repeated calls, after untimed warm-up calls."""

import statistics
import time


def median_time(call, warmup, steps):
  for _ in range(warmup):
    call()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return statistics.median(times)
