"""DataFeedService: market data (OHLCV bars) per symbol and resolution, stored, listed,
streamed and ingested as packed columns."""

from foretell.services.datafeed._ingest import ingest_bars
from foretell.services.datafeed._servicer import DataFeedServicer, add_to_server
from foretell.services.datafeed._store import BarColumns, IngestResult

__all__ = [
    "BarColumns",
    "DataFeedServicer",
    "IngestResult",
    "add_to_server",
    "ingest_bars",
]
