"""Production engagement logs: the day-partitioned Parquet layout and schema, a streaming reader with a bad-record
budget and a rank/worker split, an atomic day writer and the synthetic production world (the default data)."""
