"""encoders: a Raspberry Pi camera stream turned into CLIP embeddings and a live drift measure.

The code is laid out one folder per service (``services/<name>``) with the wire format and
settings in ``shared/``; installed, they are ``encoders.services.<name>`` and ``encoders.shared``.
"""

__version__ = "0.1.0"
