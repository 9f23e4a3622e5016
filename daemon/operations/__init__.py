"""Operations: Prometheus metrics, structured logs, and systemd's notify protocol."""
