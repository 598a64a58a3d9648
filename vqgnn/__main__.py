"""``python -m vqgnn`` runs the command line (see :mod:`vqgnn.cli`)."""
from vqgnn.cli import main

if __name__ == "__main__":
    main()
