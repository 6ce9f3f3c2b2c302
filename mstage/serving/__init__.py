"""Triton export, the python-backend model, server launcher and client."""
