"""Use cases, one module per command: each composes the layers below (data, models, metrics,
training, methods, report) into one run folder."""
