"""The server's option ranges and defaults, in one place for `serve()`, `create_app()` and the CLI (this module
needs none of the server extra's packages, so the CLI's parser can read it)."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_PARALLEL = 256            # slots (sessions) one server opens at most
DEFAULT_QUEUE = 16            # requests that may wait for a slot
MAX_QUEUE = 1_000_000
DEFAULT_MAX_BODY_BYTES = 8 * 2**20  # far above any prompt that fits a context; a bigger body is a 413
MIN_MAX_BODY_BYTES = 1024
