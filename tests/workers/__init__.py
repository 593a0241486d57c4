"""Worker functions of the distributed tests: spawned workers import them by name, so
they live in modules (``from workers import launch_workers``), not in the test files."""
