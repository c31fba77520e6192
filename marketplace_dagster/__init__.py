"""The Dagster floor of the marketplace: assets, checks, sensors, schedules, jobs, resources and
partitions over the domain package `marketplace`, assembled in `definitions.py`."""
