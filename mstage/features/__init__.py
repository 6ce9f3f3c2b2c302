"""The Feast feature store: repository generation, materialization, online reads."""
