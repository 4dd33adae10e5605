"""Stores: where bytes live (a local directory, an fsspec filesystem) and who may have written them."""
