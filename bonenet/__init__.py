"""BoneNet: router + per-part abnormality models for MURA radiographs."""

__version__ = "0.2.0"
