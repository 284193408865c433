"""Reports on recorded Allocations and CostPolicies: tables, CSV, FOCUS, plots.

`records` turns object dicts into typed records (pydantic at the boundary), `aggregate`
does the arithmetic, and the writers (`tables`, `csvout`, `focus`, `plots`) only format.
Only `source` and the two `*cmd` modules do I/O, so every figure can be reproduced from a
`kubectl get alloc,cpol -A -o json` dump.
"""
