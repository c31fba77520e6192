"""The marketplace's assets, one module per group: sync (the six partitioned steps), catalog,
and housekeeping (the maintenance job over the tables they write)."""
