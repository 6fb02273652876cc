"""DataFeedService: market data (OHLCV bars) per symbol and resolution, listed, streamed and
ingested as packed columns; the bars themselves are `foretell.marketdata`'s."""

from foretell.services.datafeed._servicer import DataFeedServicer, add_to_server

__all__ = ["DataFeedServicer", "add_to_server"]
