"""What an op and its kernels both need to know about a launch (sizes, codes, geometry), below the
ops layer so that the Triton kernels can import it without reaching up into ``ops/``."""
