"""`python -m parley`: the `parley` command (also the standalone binary's entry point)."""

from parley.cli import app

if __name__ == "__main__":
    app(prog_name="parley")
