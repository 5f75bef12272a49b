"""Triton kernels. Imported only when the triton backend runs, so triton stays optional."""
