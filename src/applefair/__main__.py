"""`python -m applefair` (also the entry point for `torchrun -m applefair`)."""

from applefair.cli import main

if __name__ == "__main__":
    main()
