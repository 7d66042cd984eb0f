"""Compiled kernels. Private: call them through cpool.functional, which validates."""
