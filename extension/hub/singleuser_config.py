"""A Jupyter config file (``--config=``): teelab's system configuration of a hub's single-user server."""

from teelab.extension.hub.singleuser import configure_server

configure_server(get_config())  # type: ignore[name-defined]  # noqa: F821
