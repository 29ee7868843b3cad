"""Errors that every layer raises and the adapters turn into a clear answer (a 400, a skipped subject)."""


class InvalidVolumeError(ValueError):
    """A scan that cannot be used: not a readable 3-D volume, non-finite or constant voxels, no
    brain in it, ...; the message says why."""
