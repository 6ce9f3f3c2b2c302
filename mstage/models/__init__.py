"""Feature encoders, the two-tower retrieval model, the DLRM ranker and metrics."""
