"""`applefair bench`: what APPLE costs next to retraining, at training and at inference.

Every number is measured on the machine it runs on, with the library's own public paths:
`applefair.baselines.get_method(name).fit` for APPLE and the retraining baselines (same
model, data, epochs and batch size), `PatchedSegmentor` for inference overhead, and
`predict_scores` for evaluation throughput. A piece that is missing or fails leaves its key
null with the reason next to it, never a made-up number.

Peak memory is the peak anonymous resident memory (RssAnon: heap and tensors, not memory-mapped
files) of this process while a step runs, sampled every 5 ms from /proc (freed memory is returned
to the OS with malloc_trim first, so earlier steps do not hide later ones); on CUDA the
allocator's peak is reported as well. Wall times depend on other load on the machine (its load
average is recorded); CPU times (process_time) much less so.
"""

from applefair.workflows.bench.config import RETRAINING, SECTIONS, TARGETS, BenchConfig, BenchSettings
from applefair.workflows.bench.run import run_bench

__all__ = ["RETRAINING", "SECTIONS", "TARGETS", "BenchConfig", "BenchSettings", "run_bench"]
