"""The paper's model and nothing else: Attend, Infer, Repeat (Eslami et al., 2016).

``air.py`` holds the generative model, the guide and the ELBO; ``grid.py`` the same three of the parallel grid
model (ours, of the SPAIR/SPACE family); ``objective.py`` the KL terms, the count prior and the score-function
surrogate; ``networks.py`` the LSTM, the what-encoder and -decoder and the NVIL baseline;
``attention.py`` the spatial transformer; ``outputs.py`` what the guide, the objective and ``infer`` return;
``config.py`` the typed ModelConfig; ``inputs.py`` the checks on the images ``infer`` is given. It imports only
torch and the package's errors (``AIR.load`` reads a checkpoint with the loader the package installs,
``checkpoint.load_model``).
"""
from .air import AIR
from .config import ModelConfig
from .grid import GridAIR
from .outputs import OBJECT_INK_THRESHOLD, GuideOutput, InferenceResult, LossOutput, eval_mode, ink_boxes


def build_model(config: ModelConfig | None = None):
    """The model ``config`` describes: :class:`AIR` (``architecture="air"``) or :class:`GridAIR` (``"grid"``)."""
    config = config or ModelConfig()
    return GridAIR(config) if config.architecture == "grid" else AIR(config)


__all__ = ["AIR", "GridAIR", "build_model", "OBJECT_INK_THRESHOLD", "GuideOutput", "InferenceResult", "LossOutput",
           "ModelConfig", "eval_mode", "ink_boxes"]
