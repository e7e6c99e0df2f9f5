"""Everything task-specific: declarations -> `TaskSpec` and a run's `TaskSet` (spec), data files
(data: readers, soft labels), tokenised task data (encoding), heads, losses, metrics, and the
SST treebank's phrases (phrases). See spec.py for the declaration format."""

from minbert.tasks.spec import (BUILTIN, PARAPHRASE_THRESHOLD, SEED_TASKS, SST_CLASS_NAMES, SST_CLASSES, SST_LABEL_NAMES,
                                TRAIN_ONLY, TaskError, TaskSet, TaskSpec, head_task, probability_logit)  # fmt: skip

__all__ = ["BUILTIN", "PARAPHRASE_THRESHOLD", "SEED_TASKS", "SST_CLASSES", "SST_CLASS_NAMES", "SST_LABEL_NAMES",
           "TRAIN_ONLY", "TaskError", "TaskSet", "TaskSpec", "head_task", "probability_logit"]
