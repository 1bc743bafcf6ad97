"""Online policy distillation: merge expert checkpoints into one student (ALGORITHMS.md §5)."""
