"""Faiss indexes over item embeddings: build, tune, save, load, search."""
