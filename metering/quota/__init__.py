"""The quota: how a call's budgets are held, charged and given back.

- `interface`: the one quota interface the proxy calls (`reserve`, `settle`, `release`) and
  the choice of backend;
- `db`: the database backend (the embedded default and the fallback), on the ledger rows;
- `redis_backend`: the Redis backend, one Lua script per operation (`lua/*.lua`, read once by
  `scripts`; pipelined by `batch`), over the clients and this process's liveness (`clients`);
- `down`: the down mode (is Redis reachable, and what a call does when it is not);
- `handover`: what the two ledgers owe each other across an outage;
- `seed`: counters created from the database; `sweep`: holds nobody can close given back;
  `reconcile`: counters compared with the database and repaired;
- `keys`: every Redis key name, built and parsed; `units`: amounts as Redis counts them.

The package imports nothing on its own: `metering.services` (under `interface`) imports `db`,
and `metering.usage_stream` (under `reconcile`) imports `clients` and `keys`, so importing the
interface here would be an import cycle. Import the module you need.
"""
