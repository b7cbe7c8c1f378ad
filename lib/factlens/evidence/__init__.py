"""The evidence: the papers' numbers with their tolerances (papers), intervals (stats), the verdict rule (claims)
and the results files (results)."""
