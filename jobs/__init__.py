"""Ray entrypoints and the command line. Each stage is ``run_*(cfg, ...) -> result``."""
