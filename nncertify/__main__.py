"""``python -m nncertify ...``: the same command line as the ``certify`` console script."""

from nncertify.certify.cli import main

if __name__ == "__main__":
    main()
