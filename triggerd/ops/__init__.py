"""Operations: logging, metrics, the HTTP endpoints, systemd notification, config reload."""
