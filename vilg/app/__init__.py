"""The ERNIE-ViLG application built on vilg's kernels: the VQGAN image tokenizer, the unified
text<->image transformer and its reranker (`model`), training (`train`), data (`data`),
evaluation (`eval`), generation (`generate`), the demo, `vilg plan` and the `vilg` command
(`cli`). The kernel library (`vilg.layouts`, `vilg.ops`, `vilg.nn`, ...) never imports it."""
