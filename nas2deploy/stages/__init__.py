"""The stages of search-and-export, one module each: plan, budget, search, size (the closed
loop's one ``Aim`` controller), retrain/export, verdict, bundle. Each takes records and returns a
record (``nas2deploy.records``)."""
