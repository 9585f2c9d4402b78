"""Solidity sources of the round registry and their compiled artifacts (ABI + bytecode)."""
