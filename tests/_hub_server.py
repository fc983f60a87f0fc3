"""The local hub for the tests: lensutil/local_hub.py (there so notebook 09 can start it anywhere)."""

from lensutil.loading.local_hub import (  # noqa: F401
    INVALID_CREDENTIALS,
    HubServer,
    Repo,
    make_token,
    refusing_endpoint,
    renamed_keys_repo,
    silent_endpoint,
    standard_repos,
)
