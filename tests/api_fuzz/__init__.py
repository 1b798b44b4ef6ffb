"""API contract fuzzing: Schemathesis against a real `parley serve` (run with `python -m tests.api_fuzz`)."""
