"""ForecastService on the public servers: recorded forecasts (listed and streamed) and runs."""

from foretell.services.forecast._servicer import ForecastServicer, add_to_server

__all__ = ["ForecastServicer", "add_to_server"]
