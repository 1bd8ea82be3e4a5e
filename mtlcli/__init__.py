"""mtl: one model that detects objects and segments the scene — prepare, train, eval, viz, benchmark."""

__version__ = "0.1.0"
