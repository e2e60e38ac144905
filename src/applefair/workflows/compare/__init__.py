"""`applefair compare`: the experiment grid (methods x segmentors x datasets x seeds)."""
