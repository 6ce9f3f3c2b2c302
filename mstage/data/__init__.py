"""Input data: schema, ingest, splits and the synthetic generator."""
