"""The engine every training loop and use case shares: devices, precision, processes, samplers,
checkpoints, seeding, atomic I/O and the run-folder contract. Imports nothing above it."""
