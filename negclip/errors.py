"""Errors that come from the user's input or environment, shown as one message instead of a stack trace."""

from negclip.data import DataFormatError, MissingImagesError
from negclip.encode import EmptyCaptionError
from negclip.images import ImageLoadError
from negclip.models import ModelLoadError
from negclip.train import TrainingDivergedError
from negclip.tuning import AdapterError

# ValueError covers invalid settings; OSError covers missing files, permissions and a full disk.
USER_ERRORS = (
    DataFormatError,
    MissingImagesError,
    EmptyCaptionError,
    ImageLoadError,
    ModelLoadError,
    AdapterError,
    TrainingDivergedError,
    ValueError,
    OSError,
)
