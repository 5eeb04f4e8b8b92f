"""What every layer may import: declared bounds, CLI output, listening sockets, Prometheus
text and host memory. Imports nothing from app but app.config."""
