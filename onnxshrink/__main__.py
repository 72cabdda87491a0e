"""`python -m onnxshrink`: the same command line as `onnxshrink`."""

from onnxshrink.cli import main

if __name__ == "__main__":
    main()
