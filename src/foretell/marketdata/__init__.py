"""Market data: OHLCV bars per symbol and resolution — their columns, the queries that store
and read them, the rules a bar must meet, ingestion, and the DataFeed messages that carry them.

The DataFeed service and the run-scoped server in the jail both serve bars from here."""

from foretell.marketdata.ingest import ingest_bars
from foretell.marketdata.queries import BarColumns, BarQuery, IngestResult

__all__ = ["BarColumns", "BarQuery", "IngestResult", "ingest_bars"]
