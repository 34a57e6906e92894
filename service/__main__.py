"""`python -m service` and the `lms-webhooks` command."""

import sys

from service import startup_signals


def main() -> int:
    startup_signals.install()  # before the imports below, which take most of a start
    from service.cli import main as command

    return command()


if __name__ == "__main__":
    sys.exit(main())
