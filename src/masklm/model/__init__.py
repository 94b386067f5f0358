"""The encoder, its heads, and model folders. Importing the package registers the built-in heads."""

from masklm.model import electra as _electra  # noqa: F401  (registers ElectraGenerator, ElectraPreTraining)
from masklm.model import heads as _heads  # noqa: F401  (registers MaskedLM, SequenceClassification, ...)
