"""The error every stage raises when pretrained weights are asked for and cannot be had."""


class WeightsUnavailableError(RuntimeError):
    """A download of weights failed (offline, or a wrong URL); the message is one sentence
    saying where to place the file or which setting to change."""
