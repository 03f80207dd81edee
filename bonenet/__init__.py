"""BoneNet: router + per-part abnormality models for MURA radiographs."""

__version__ = "0.1.0"
