"""Sources: plugins that turn the outside world into events (see triggerd.interfaces)."""
