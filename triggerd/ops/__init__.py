"""Operations: logging, and (later) metrics, health and systemd notification."""
