"""jaxseq: convolutional autoencoders on DNA sequence in JAX/Flax."""

__version__ = "0.1.0"
