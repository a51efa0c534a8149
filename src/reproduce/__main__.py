"""``python -m src.reproduce``: see src/reproduce/__init__.py."""

from src.reproduce.cli import main

if __name__ == "__main__":
    main()
