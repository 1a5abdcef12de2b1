"""`python -m xsoar_local`: the same as the `xsoar-local` command."""

from xsoar_local.cli import main

if __name__ == "__main__":
    main()
