"""What every benchmark result records about where it was measured (``attend_infer_repeat.provenance``)."""
from attend_infer_repeat.provenance import cpu_model, git_commit, machine, record  # noqa: F401
