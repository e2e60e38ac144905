"""CLI commands: each module defines `register(app)`, discovered by `applefair.cli`."""
