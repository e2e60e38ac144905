"""Training loops shared by use cases: ERM training of the model to deploy."""
