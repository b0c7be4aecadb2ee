"""``python -m snnfast --version --config``."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m snnfast",
                                     description="snnfast: spiking neural networks on the CPU.")
    parser.add_argument("--version", action="store_true", help="print the version")
    parser.add_argument("--config", action="store_true",
                        help="print OpenMP status, threads, BLAS and build flags")
    args = parser.parse_args(argv)
    import snnfast
    from snnfast._config import config_dict, format_config
    if args.version:
        print(f"snnfast {snnfast.__version__}")
    if args.config or not args.version:
        c = config_dict()       # one reading of the thread variables for report and verdict
        print(format_config(c))
        error = c["threads_error"]
        if error:
            # the report is printed; the exit code and one line on stderr flag the bad setting
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
