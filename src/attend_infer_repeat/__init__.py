"""attend-infer-repeat: Attend, Infer, Repeat (Eslami et al., 2016) in plain PyTorch.

    from attend_infer_repeat import AIR
    model = AIR.load("runs/NAME/best.pt")  # whichever model the checkpoint holds (AIR or GridAIR)
    result = model.infer(images)        # counts, boxes, z_what per image
"""
__version__ = "0.1.0"

from . import checkpoint as _checkpoint  # noqa: E402
from .config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from .data import SceneConfig, Scenes  # noqa: E402
from .errors import AIRError, CheckpointError, DataError, InputError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .model import AIR, GridAIR, InferenceResult  # noqa: E402
from .report import render_report  # noqa: E402

AIR.loader = GridAIR.loader = staticmethod(_checkpoint.load_model)

__all__ = ["AIR", "GridAIR", "InferenceResult", "Scenes", "SceneConfig", "evaluate", "render_report", "ModelConfig",
           "TrainConfig", "RunConfig", "AIRError", "InputError", "DataError", "CheckpointError", "__version__"]
