"""The four online stages as operators, and the Pipeline that runs them."""
