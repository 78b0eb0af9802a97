"""jaxseq: convolutional autoencoders on DNA sequence in JAX/Flax.

The notebook API::

    import jaxseq
    model = jaxseq.load_run("runs/lambda")   # -> jaxseq.TrainedModel

``load_run`` and ``TrainedModel`` live in :mod:`jaxseq.trained`; they are imported on first use, so
``import jaxseq.tokens`` (numpy only, used by loader processes) does not pull in JAX and orbax.
"""

__version__ = "0.1.0"
__all__ = ["TrainedModel", "load_run", "__version__"]


def __getattr__(name: str):
    if name in ("TrainedModel", "load_run"):
        from jaxseq import trained

        return getattr(trained, name)
    raise AttributeError(f"module 'jaxseq' has no attribute {name!r}")
